"""The training loop every learned method runs in, and the hooks a method gives it.

A method (:class:`TrainingHooks`; in practice a :class:`clipseg_cli.methods.base.LearnedMethod`)
says how to build its model and optimizer (fresh or from a checkpoint), which batches iteration
``i`` sees, the learning rates at ``i``, and the loss of a batch. :class:`Trainer` does the rest,
the same for every method:

- the run folder: an existing run needs ``--resume``; ``--resume`` keeps the run's defining
  settings (an explicit different value is an error) and continues exactly (model, optimizer,
  RNG states, iteration; the data stream is a function of seed and iteration); stale ``*.part``
  files are removed; ``metrics.jsonl`` is cut back to the checkpoint's iteration;
- each step under ``--precision`` (autocast), a non-finite loss stops the run with one line
  (nothing saved past the last good checkpoint), out of memory is one line naming the settings to
  lower, Ctrl-C (and a bad image met mid-run) saves ``last.pt`` first;
- ``last.pt`` every ``save_every`` iterations and at the end (atomic), ``metrics.jsonl`` per
  iteration, ``loss.png`` and ``run.json`` (settings, speed, peak memory, status).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch
from torch import nn

from clipseg_cli import __version__
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import remove_stale_parts, write_json
from clipseg_cli.training.checkpoint import make_checkpoint, rng_state, save_checkpoint, set_rng_state
from clipseg_cli.training.precision import autocast, check_precision
from clipseg_cli.training.reporting import QuietReporter, Reporter
from clipseg_cli.training.run import (
    CURVE,
    LAST,
    METRICS,
    RUN,
    RunState,
    open_run,
    out_of_memory_message,
    peak_memory,
    truncate_jsonl,
    write_loss_curve,
)

if TYPE_CHECKING:
    from clipseg_cli.training.config import RunConfig


class TrainingHooks:
    """What a method gives the engine. Subclasses set ``kind`` and ``command`` and implement
    :meth:`setup`, :meth:`batches`, :meth:`schedule`, :meth:`loss` and :meth:`model_config`;
    the rest have defaults."""

    kind: str = ""
    command: str = ""
    # extra JSON-lines files of the run folder cut back on --resume, like metrics.jsonl
    jsonl_files: tuple[str, ...] = ()
    # the checkpoint key holding the number of training samples (a warning when it changed on --resume)
    samples_key: str = "pairs"
    samples_noun: str = "training images"
    # what a review file decided (clipseg_cli.methods.base.LearnedMethod.apply_review): run.json's "review"
    review: dict[str, Any] | None = None

    cfg: RunConfig
    device: torch.device
    reporter: Reporter
    model: nn.Module  # what is put in train mode
    optimizer: torch.optim.Optimizer
    iters: int  # the run's length in iterations

    # -- required --
    def setup(self, ckpt: dict[str, Any] | None) -> None:
        """Build the data, ``model`` (weights loaded from ``ckpt`` when given, else freshly
        initialised after seeding) and ``optimizer`` (its state is loaded by the engine); set ``iters``."""
        raise NotImplementedError

    def batches(self, start: int) -> Iterable[Any]:
        """The batches of iterations ``start`` .. ``iters - 1``, in order. A dict batch may carry
        ``"error"``: a list of messages of unreadable samples (the run stops with the first)."""
        raise NotImplementedError

    def schedule(self, iteration: int) -> dict[str, Any]:
        """Set the learning rates of ``iteration``; returns the fields logged with it (``lr`` first)."""
        raise NotImplementedError

    def loss(self, batch: Any, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on ``batch`` and its named parts (logged in metrics.jsonl)."""
        raise NotImplementedError

    def model_config(self) -> dict[str, Any]:
        """What rebuilds the network (saved in every checkpoint)."""
        raise NotImplementedError

    # -- optional --
    @property
    def samples(self) -> int:
        return 0

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        """Anything beyond model, optimizer and RNG a resumed run takes from ``ckpt``."""

    def checkpoint_extra(self) -> dict[str, Any]:
        return {}

    def summary_extra(self) -> dict[str, Any]:
        return {}

    def before_save(self, iteration: int, interrupted: bool) -> None:
        """Called before every ``last.pt`` (e.g. validation); ``interrupted`` on Ctrl-C or an error."""

    def oom_hint(self) -> str:
        return f"--batch-size {self.cfg.batch}"

    def describe(self) -> str:
        """One line about the run for the user (what trains on what)."""
        return f"{self.command} on {self.device}"


class Trainer:
    """One run of a method: set up from its config or from ``last.pt``, then :meth:`run`.

    ``explicit``: the config fields given on the command line (``--resume`` refuses those that
    differ from the run's)."""

    def __init__(
        self,
        hooks: TrainingHooks,
        *,
        resume: bool = False,
        explicit: Iterable[str] = (),
        reporter: Reporter | None = None,
    ) -> None:
        self.hooks = hooks
        cfg = hooks.cfg
        self.out = out = Path(cfg.out)
        self.reporter = hooks.reporter = reporter or QuietReporter()
        cfg.validate()
        check_precision(cfg.precision, hooks.device)
        ckpt = open_run(out, hooks.kind, hooks.command, resume)
        if ckpt is None and resume:
            self.reporter.message(f"nothing to resume in {out}: starting a new run")
        if ckpt is not None:
            cfg.apply_saved(ckpt["train_config"], list(explicit))
        hooks.setup(ckpt)
        self.state = st = RunState()
        if ckpt is not None:
            try:
                hooks.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as exc:
                raise ConfigError(f"--resume: optimizer state does not fit the model ({exc})") from None
            set_rng_state(ckpt["rng"])
            st.iteration = int(ckpt["iteration"])
            st.seconds = float(ckpt.get("seconds", 0.0))
            st.last_saved = st.iteration
            hooks.restore(ckpt)
            before = ckpt.get(hooks.samples_key)
            if before is not None and before != hooks.samples:
                self.reporter.message(
                    f"warning: the run started with {before} {hooks.samples_noun}, now {hooks.samples}: "
                    "the resumed run will not repeat the original exactly"
                )
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(out)
        for name in (METRICS, *hooks.jsonl_files):
            truncate_jsonl(out / name, st.iteration)
        if ckpt is not None:
            self.reporter.message(f"resuming {out} at iteration {st.iteration} of {hooks.iters}")

    # -- checkpoints and run.json --
    def save(self, interrupted: bool = False) -> None:
        hooks, st, cfg = self.hooks, self.state, self.hooks.cfg
        hooks.before_save(st.iteration, interrupted)
        save_checkpoint(
            self.out / LAST,
            make_checkpoint(
                hooks.kind,
                hooks.model_config(),
                list(cfg.class_names),
                hooks.model_state(),
                iteration=st.iteration,
                max_iter=hooks.iters,
                **hooks.checkpoint_extra(),
                optimizer=hooks.optimizer.state_dict(),
                rng=rng_state(),
                train_config=cfg.to_json(),
                seconds=st.seconds,
            ),
        )
        st.last_saved = st.iteration
        self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        hooks, st = self.hooks, self.state
        summary = {
            "command": hooks.command,
            "wsss_label": __version__,
            "torch": torch.__version__,
            "status": st.status,
            "kind": hooks.kind,
            "model_config": hooks.model_config(),
            "config": hooks.cfg.to_json(),
            "device": str(hooks.device),
            "precision": hooks.cfg.precision,
            "iteration": st.iteration,
            "max_iter": hooks.iters,
            "seconds": round(st.seconds, 3),
            "this_session": st.session(),
            "final_loss": st.final_loss(),
            "final_loss_parts": {k: round(v, 6) for k, v in st.parts.items()},
            "peak_memory": peak_memory(hooks.device),
            "files": {"last": LAST, "metrics": METRICS, "curve": CURVE},
            "review": hooks.review,
        }
        for key, value in hooks.summary_extra().items():
            if isinstance(value, dict) and isinstance(summary.get(key), dict):
                summary[key] = {**summary[key], **value}
            else:
                summary[key] = value
        write_json(self.out / RUN, summary)
        return summary

    # -- the loop --
    def _step(self, batch: Any, iteration: int) -> tuple[float, dict[str, float]]:
        hooks = self.hooks
        with autocast(hooks.cfg.precision, hooks.device):
            loss, parts = hooks.loss(batch, iteration)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(value)
        hooks.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        hooks.optimizer.step()
        return value, parts

    def run(self) -> dict[str, Any]:
        """Train to the end; returns the run.json summary. Ctrl-C saves last.pt, then re-raises."""
        hooks, st, cfg = self.hooks, self.state, self.hooks.cfg
        st.session_start_iter = st.iteration
        self.reporter.start(st.iteration, hooks.iters)
        hooks.model.train()
        started, base_seconds, diverged = time.perf_counter(), st.seconds, False
        try:
            with open(self.out / METRICS, "a") as metrics:
                for batch in hooks.batches(st.iteration):
                    errors = [e for e in batch.get("error", ()) if e] if isinstance(batch, dict) else []
                    if errors:
                        raise ConfigError(errors[0])
                    fields = hooks.schedule(st.iteration)
                    try:
                        value, parts = self._step(batch, st.iteration)
                    except FloatingPointError as exc:
                        diverged = True
                        raise ConfigError(f"the loss became {exc} at iteration {st.iteration + 1}; lower --lr and start again") from None
                    st.iteration += 1
                    st.session_seconds = time.perf_counter() - started
                    st.seconds = base_seconds + st.session_seconds
                    st.losses.append(value)
                    st.parts = parts
                    row = {"iteration": st.iteration, "loss": value, **parts, **fields, "seconds": round(st.seconds, 3)}
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    ran = st.iteration - st.session_start_iter
                    self.reporter.step(st.iteration, value, float(fields["lr"]), ran / max(st.session_seconds, 1e-9))
                    if (cfg.save_every and st.iteration % cfg.save_every == 0) or st.iteration == hooks.iters:
                        if st.iteration == hooks.iters:
                            st.status = "finished"
                        self.save()
        except (KeyboardInterrupt, ConfigError) as exc:
            st.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if st.iteration > st.last_saved and not diverged:
                self.save(interrupted=True)
                self.reporter.message(f"saved {self.out / LAST} at iteration {st.iteration}; rerun with --resume to continue")
            write_loss_curve(self.out / METRICS, self.out / CURVE)
            raise
        except RuntimeError as exc:
            message = out_of_memory_message(exc, hooks.device)
            if message is None:
                raise
            raise ConfigError(f"{message} at {hooks.oom_hint()}; lower them") from None
        st.status = "finished"
        if st.last_saved != st.iteration:
            self.save()  # a run resumed when already complete
        write_loss_curve(self.out / METRICS, self.out / CURVE)
        return self.write_summary()


def train(hooks: TrainingHooks, *, resume: bool = False, explicit: Iterable[str] = (),
          reporter: Reporter | None = None) -> dict[str, Any]:  # fmt: skip
    """Set up and run one training run; returns the run.json summary."""
    return Trainer(hooks, resume=resume, explicit=explicit, reporter=reporter).run()
