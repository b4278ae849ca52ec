"""Checkpoint files: one ``torch.save`` dict, written atomically, read with ``weights_only=True``.

Every checkpoint has::

    format        "wsss-label-checkpoint"
    version       1
    kind          which network family; ``predict`` dispatches on it ("deeplabv2")
    model_config  what rebuilds the network: {"arch", "num_classes", "style", "normalization"}
    class_names   foreground classes in label order (mask value = 1 + index)
    model         the state dict
    iteration     iterations done; ``max_iter`` the run's total

Training checkpoints (``last.pt``) also hold ``optimizer``, ``rng`` (torch, CUDA, numpy, Python
states), ``train_config``, ``seconds``, ``best``; ``best.pt`` holds the model only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipseg_cli import __version__
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import atomic_path
from clipseg_cli.io.torch_files import load_torch_file

CHECKPOINT_FORMAT = "wsss-label-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("kind", "model_config", "class_names", "model")


def make_checkpoint(kind: str, model_config: dict[str, Any], class_names: list[str], model_state: dict, **extra: Any) -> dict[str, Any]:
    """The common header plus ``extra`` fields."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "wsss_label": __version__,
        "kind": kind,
        "model_config": model_config,
        "class_names": list(class_names),
        "model": model_state,
        **extra,
    }


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename onto it."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: str | Path, what: str = "--checkpoint") -> dict[str, Any]:
    """Load and validate a checkpoint; ConfigError (one line) when it is not one of ours."""
    path = Path(path)
    obj = load_torch_file(path, what)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{what} {path}: not a wsss-label checkpoint (no format field {CHECKPOINT_FORMAT!r})")
    if int(obj.get("version", 0)) > CHECKPOINT_VERSION:
        raise ConfigError(f"{what} {path}: checkpoint version {obj.get('version')} is newer than this wsss-label")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise ConfigError(f"{what} {path}: checkpoint lacks {', '.join(missing)}")
    return obj


def rng_state() -> dict[str, Any]:
    """Every RNG the run could touch, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype("int64")),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npd = state["numpy"]
    np.random.set_state((npd["name"], npd["keys"].numpy().astype("uint32"), npd["pos"], npd["has_gauss"], npd["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
