"""Label maps as indexed PNGs with the PASCAL VOC palette (what VOC-style loaders read)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.io.atomic import write_bytes

IGNORE_LABEL = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map: (n, 3) uint8, index 255 is (224, 224, 192)."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def encode_mask_png(mask: np.ndarray) -> bytes:
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError("a mask is a 2-D uint8 array")
    img = Image.fromarray(mask, mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_mask(dest: str | os.PathLike[str], mask: np.ndarray) -> None:
    write_bytes(dest, encode_mask_png(mask))


def load_label_map(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label PNG: palette indices as they are, a plain grey image as values."""
    with Image.open(Path(path)) as img:
        if img.mode not in ("P", "L", "I", "I;16", "1"):
            raise ValueError(f"{path}: a label map must be a palette or greyscale PNG, not {img.mode}")
        values = np.asarray(img)
    if values.dtype != np.uint8 and values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(f"{path}: label values must be 0..255, found {values.min()}..{values.max()}")
    return values.astype(np.uint8)
