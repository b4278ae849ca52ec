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
    return np.array(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))  # writable


def resize_to_patches(image: np.ndarray, patch: int = 16) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w, 3) uint8, h and w multiples of ``patch`` (Pillow bicubic)."""
    height, width = padded_size(image.shape[0], image.shape[1], patch)
    return np.array(Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC))  # writable


_MEAN_STD: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # per device, made once


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """(B, h, w, 3) uint8 on any device -> (B, 3, h, w) float32 with CLIP's mean and std."""
    arr = pixels.permute(0, 3, 1, 2).float() / 255.0
    if pixels.device not in _MEAN_STD:
        _MEAN_STD[pixels.device] = tuple(  # type: ignore[assignment]
            torch.tensor(v).view(3, 1, 1).to(pixels.device) for v in (CLIP_MEAN, CLIP_STD)
        )
    mean, std = _MEAN_STD[pixels.device]
    return (arr - mean) / std


def to_clip_tensor(image: np.ndarray, patch: int = 16) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 normalised, h and w multiples of ``patch``."""
    return normalize_pixels(torch.from_numpy(resize_to_patches(image, patch))[None])
