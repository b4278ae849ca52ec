"""Reading PyTorch files safely (``weights_only=True``) with a one-line reason when that fails."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

from clipseg_cli.errors import ConfigError

_MAX_REASON = 160


def _first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    match = re.match(r"(.+?[.!?])(\s|$)", line)
    sentence = match.group(1) if match else line
    if len(sentence) > _MAX_REASON:
        sentence = sentence[:_MAX_REASON].rsplit(" ", 1)[0] + " ..."
    return sentence


def load_error_reason(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in our words, on one line.

    Never torch's own advice to retry with ``weights_only=False``: a file that needs it can
    run code when loaded, and is refused.
    """
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in text.replace(" ", "_").lower():
        detail = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
        detail = _first_sentence(detail).rstrip(".")
        extra = f" ({detail})" if detail else ""
        return f"it holds more than tensors, or is not in torch.save's format{extra}; refused, as loading it could run code"
    if isinstance(exc, EOFError) or "unexpected EOF" in text or "ran out of input" in text.lower():
        return "the file is empty or cut short"
    if isinstance(exc, (IsADirectoryError, PermissionError, FileNotFoundError)):
        return exc.strerror or type(exc).__name__
    reason = _first_sentence(text)
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__


def load_torch_file(path: str | Path, what: str, error: type[ConfigError] = ConfigError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, torch's warnings silenced; ``error``
    (one line naming ``what`` and the file) when it is missing or cannot be read so."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip and weights-only errors all mean "unreadable"
        raise error(f"{what} {path}: not a readable PyTorch weights file: {load_error_reason(exc)}") from None
