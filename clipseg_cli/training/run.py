"""The run folder (``--out``) of every training command, and exact ``--resume`` with its rules.

Files::

    last.pt        latest checkpoint (model, optimizer, iteration, RNG states), every --save-every
                   iterations, at the end, and on Ctrl-C; always written atomically
    metrics.jsonl  one line per iteration: {"iteration", "loss", <loss parts>, "lr", ..., "seconds"}
    loss.png       loss curve (raw and smoothed) with the learning rate
    run.json       summary: settings, iterations, speed, peak memory, status

(``retrain`` adds ``best.pt`` and ``val.jsonl`` with ``--val``.)

Resume rules: an existing ``last.pt`` needs ``--resume``; ``--resume`` reads a training checkpoint of
the same method only; the run keeps its defining settings, and one given explicitly with another
value than the run's is an error naming it (:func:`resume_conflicts`).
"""

from __future__ import annotations

import io
import json
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import write_bytes
from clipseg_cli.training.checkpoint import read_checkpoint

LAST, BEST, METRICS, VAL, CURVE, RUN = "last.pt", "best.pt", "metrics.jsonl", "val.jsonl", "loss.png", "run.json"


@dataclass
class RunState:
    """Where a run stands: iterations done, seconds trained (all sessions), this session's share."""

    iteration: int = 0
    seconds: float = 0.0
    last_saved: int = -1
    session_start_iter: int = 0
    session_seconds: float = 0.0
    status: str = "running"
    losses: list[float] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)

    def session(self) -> dict[str, Any]:
        ran = self.iteration - self.session_start_iter
        secs = self.session_seconds
        return {
            "iterations": ran,
            "seconds": round(secs, 3),
            "seconds_per_iteration": round(secs / ran, 4) if ran else None,
            "iterations_per_second": round(ran / secs, 4) if ran and secs else None,
        }

    def final_loss(self) -> float | None:
        return round(float(np.mean(self.losses[-20:])), 6) if self.losses else None


# -- metrics.jsonl and the loss curve ------------------------------------------------------------
def truncate_jsonl(path: Path, upto: int) -> None:
    """Keep the lines of ``path`` whose iteration is <= ``upto`` (what a resumed run continues from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= upto:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_bytes(path, ("\n".join(kept) + "\n").encode() if kept else b"")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_loss_curve(metrics_path: Path, dest: Path) -> None:
    """Loss per iteration (raw and moving average) and the learning rate, as a PNG (atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_metrics(metrics_path)
    if not rows:
        return
    it = np.array([r["iteration"] for r in rows])
    loss = np.array([r["loss"] for r in rows], dtype=np.float64)
    lr = np.array([r["lr"] for r in rows], dtype=np.float64)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(it, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    window = max(1, min(50, len(loss) // 10))
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(it[window - 1 :], smooth, color="tab:blue", linewidth=1.5, label=f"mean of {window}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax2 = ax.twinx()
    ax2.plot(it, lr, color="tab:orange", linewidth=1.0)
    ax2.set_ylabel("lr", color="tab:orange")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(dest, buf.getvalue())


def peak_memory(device: torch.device) -> dict[str, float]:
    peak = {"rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    if device.type == "cuda":
        peak["cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        peak["cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return peak


def out_of_memory_message(exc: BaseException, device: torch.device) -> str | None:
    """A one-line description when ``exc`` is an out-of-memory error, else None."""
    text = str(exc)
    oom = getattr(torch, "OutOfMemoryError", ())
    if isinstance(exc, oom) or "out of memory" in text or "can't allocate memory" in text:
        return f"out of {'GPU' if device.type == 'cuda' else 'CPU'} memory"
    return None


# -- the folder and --resume ---------------------------------------------------------------------
def check_out_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")


def read_resume_checkpoint(out: Path, kind: str, command: str) -> dict[str, Any] | None:
    """The training checkpoint ``--resume`` continues from: None when ``out`` has none; ConfigError
    when it is not a training checkpoint of ``kind``."""
    last = Path(out) / LAST
    if not last.exists():
        return None
    ckpt = read_checkpoint(last, "--resume")
    if ckpt.get("kind") != kind or "optimizer" not in ckpt or "train_config" not in ckpt:
        raise ConfigError(f"--resume: {last} is not a training checkpoint of {command}")
    return ckpt


def open_run(out: Path, kind: str, command: str, resume: bool) -> dict[str, Any] | None:
    """Check ``--out`` and return the checkpoint to resume from (None: a new run).

    An existing run without ``--resume`` is an error (nothing is overwritten)."""
    check_out_folder(out)
    if (out / LAST).exists() and not resume:
        raise ConfigError(f"{out} already holds a training run ({LAST}); pass --resume to continue it or choose another --out")
    return read_resume_checkpoint(out, kind, command) if resume else None


def resume_conflicts(saved: dict[str, Any], given: dict[str, Any], explicit: Sequence[str]) -> list[str]:
    """Defining settings given explicitly on the command line that differ from the saved run."""
    out = []
    for name in explicit:
        if name in saved and name in given and saved[name] != given[name]:
            out.append(f"{name} (run: {saved[name]!r}, asked: {given[name]!r})")
    return out


def refuse_conflicts(saved: dict[str, Any], given: dict[str, Any], explicit: Sequence[str]) -> None:
    conflicts = resume_conflicts(saved, given, explicit)
    if conflicts:
        raise ConfigError(
            "--resume continues the run as it was started; these differ: " + "; ".join(conflicts) + ". Drop them, or train into a new --out"
        )
