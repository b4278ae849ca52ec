"""Reading label maps and saved CAMs for scoring; any bad file is a ConfigError naming it."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from clipseg_cli.errors import ConfigError
from clipseg_cli.io.masks import load_label_map

CAM_KEYS = ("cam", "refined")


def read_label_map(path: Path) -> np.ndarray:
    """A (H, W) uint8 label map from a palette or greyscale PNG."""
    try:
        return load_label_map(path)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as exc:
        raise ConfigError(f"cannot read label map {path}: {exc}") from None


@dataclass(frozen=True)
class SavedCams:
    """CAMs of one image: ``cams`` float32 (K, H, W); ``labels`` int (K,) 0-based classes."""

    cams: np.ndarray
    labels: np.ndarray


def read_cams(path: Path, key: str = "refined") -> SavedCams:
    """Load ``labels`` and the ``key`` CAM stack from a ``cams/<rel>.npz`` of the main command."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files or "labels" not in data.files:
                need = "labels" if "labels" not in data.files else key
                raise ConfigError(f"{path}: no {need!r} array (has {', '.join(data.files) or 'nothing'})")
            cams = np.asarray(data[key], dtype=np.float32)
            labels = np.asarray(data["labels"]).reshape(-1)
    except ConfigError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"cannot read CAMs {path}: {exc}") from None
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{path}: 'labels' must hold integer class indices, not {labels.dtype}")
    if cams.ndim == 2 and labels.size == 1:
        cams = cams[None]
    if cams.ndim != 3 or cams.shape[0] != labels.size:
        raise ConfigError(f"{path}: {key!r} has shape {cams.shape}, expected (K, H, W) with K = {labels.size} labels")
    return SavedCams(cams=cams, labels=labels.astype(np.int64))
