"""Learned refiners (``wsss-label refine``): networks trained on seed masks that make better ones.

A refiner is a :class:`clipseg_cli.refiners.base.RefinerModel` subclass (frozen parts that are not
saved, learnable parts that are, a forward to class logits and a training loss) in its own module.
The shared machinery in :mod:`clipseg_cli.refiners.base` does the rest for every refiner: image /
seed / label pairing and augmentation, the training loop (AdamW, warm-up + poly schedule, atomic
checkpoints, exact ``--resume``, metrics.jsonl, run.json, the progress bar) and prediction to masks
in the main command's format with WeakCLIP's eq. 14 (classes an image is not labelled with -> 255).

Adding one (CLIMS, DALNet, ViT-PCM, ...) is one line in :data:`REFINERS`: its checkpoints get the
kind ``refiner.<name>``, ``wsss-label refine train --method <name>`` trains it, and both
``wsss-label refine predict`` and ``wsss-label predict`` read its checkpoints.

This module is plain data (nothing heavy is imported) so the CLI and the predictor registry can
read it at start-up.
"""

from __future__ import annotations

# method name -> "module:RefinerModel subclass"; the first is the default of --method.
REFINERS: dict[str, str] = {
    "weakclip": "clipseg_cli.refiners.weakclip:WeakCLIP",
}
KIND_PREFIX = "refiner."


def refiner_kind(method: str) -> str:
    """The checkpoint ``kind`` of a refiner method, e.g. ``refiner.weakclip``."""
    return f"{KIND_PREFIX}{method}"


def predictor_entries() -> dict[str, str]:
    """``kind -> "module:function"`` entries for :data:`clipseg_cli.segmentation.predict.PREDICTORS`
    (imported only when a checkpoint of that kind is predicted with)."""
    return {refiner_kind(name): "clipseg_cli.refiners.base:load_refiner_predictor" for name in REFINERS}
