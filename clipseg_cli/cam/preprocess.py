"""CLIP-ES input: resize to the next multiple of the patch size (Pillow bicubic), normalise."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def padded_size(height: int, width: int, patch: int = 16) -> tuple[int, int]:
    """``(ceil(H/p)*p, ceil(W/p)*p)``: the size the reference resizes to (at least one patch)."""
    return max(1, math.ceil(height / patch)) * patch, max(1, math.ceil(width / patch)) * patch


def limit_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Scale an RGB image down (Pillow bicubic) so its longer side is at most ``max_side``."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def to_clip_tensor(image: np.ndarray, patch: int = 16) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 normalised, h and w multiples of ``patch``."""
    height, width = padded_size(image.shape[0], image.shape[1], patch)
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((arr - mean) / std).unsqueeze(0)
