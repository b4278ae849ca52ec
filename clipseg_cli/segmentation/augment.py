"""Training augmentation: random scale, pad-and-random-crop, horizontal flip.

Every random choice comes from the ``numpy.random.Generator`` passed in, so a sample is a pure
function of (image, mask, generator seed): this is what makes ``--resume`` exact.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from clipseg_cli.io.masks import IGNORE_LABEL


def rescale(image: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize image bilinearly and mask with nearest neighbour by ``scale``."""
    if scale == 1.0:
        return image, mask
    h, w = mask.shape
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return image, mask


def pad_to(image: np.ndarray, mask: np.ndarray, size: int, fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right up to ``size`` x ``size``: image with ``fill`` (the mean pixel), mask with 255."""
    h, w = mask.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return image, mask
    out = np.empty((h + ph, w + pw, 3), dtype=np.float32)
    out[...] = np.asarray(fill, np.float32)
    out[:h, :w] = image
    out_mask = np.full((h + ph, w + pw), IGNORE_LABEL, dtype=np.uint8)
    out_mask[:h, :w] = mask
    return out, out_mask


def random_crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` window at a random position (inputs at least that large)."""
    h, w = mask.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return image[y : y + size, x : x + size], mask[y : y + size, x : x + size]


def train_augment(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    scales: Sequence[float],
    crop: int,
    fill: np.ndarray,
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale from ``scales``, pad (mean / 255) and random crop to ``crop``, 50% horizontal flip.

    ``image`` (H, W, 3) RGB, ``mask`` (H, W) uint8; returns float32 image and uint8 mask, both
    ``crop`` x ``crop``.
    """
    scale = float(scales[int(rng.integers(0, len(scales)))])
    image, mask = rescale(image, mask, scale)
    image, mask = pad_to(image.astype(np.float32, copy=False), mask, crop, fill)
    image, mask = random_crop(image, mask, crop, rng)
    if flip and rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(mask)


def resize_long(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize (bicubic) so that the longer side is ``long_side`` pixels."""
    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def place_crop(image: np.ndarray, size: int, rng: np.random.Generator, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A ``size`` x ``size`` crop of an (H, W, C) array, per side: a random window of a longer side,
    or the whole side at a random offset in the crop (the rest ``fill``), as IRN's ``random_crop``.
    Returns the crop and its (size, size) mask of image pixels."""
    h, w = image.shape[:2]
    out = np.full((size, size, image.shape[2]), fill, dtype=image.dtype)
    valid = np.zeros((size, size), np.uint8)
    spans = []
    for side in (h, w):
        n = min(size, side)
        if side > size:  # (offset in the crop, offset in the image)
            spans.append((0, int(rng.integers(0, side - size + 1)), n))
        else:
            spans.append((int(rng.integers(0, size - side + 1)), 0, n))
    (cy, iy, nh), (cx, ix, nw) = spans
    out[cy : cy + nh, cx : cx + nw] = image[iy : iy + nh, ix : ix + nw]
    valid[cy : cy + nh, cx : cx + nw] = 1
    return out, valid
