"""The one training engine every learned method runs on (``retrain``, ``refine train``, ``train-cam``).

- :mod:`.run`: the run folder (``last.pt``, ``metrics.jsonl``, ``loss.png``, ``run.json``), the run
  state, exact ``--resume`` and its conflict rules;
- :mod:`.checkpoint`: checkpoint files (atomic, ``weights_only``) and the RNG states they carry;
- :mod:`.engine`: the loop (mixed precision, non-finite loss, out of memory, Ctrl-C) driving a
  method's hooks (:class:`clipseg_cli.methods.base.LearnedMethod`);
- :mod:`.schedules`: learning-rate schedules; :mod:`.data`: the deterministic sample stream;
- :mod:`.config`: the settings dataclasses' field metadata (help, flags, limits, defining);
- :mod:`.reporting`: the progress callbacks (the library never prints).

Nothing here imports a terminal library.
"""
