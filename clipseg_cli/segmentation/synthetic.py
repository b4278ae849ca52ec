"""A synthetic segmentation set of coloured shapes, for tests, benchmarks and smoke runs.

Class c (1..K) is a shape (rectangle or ellipse) of a class-specific hue with noise on a noisy
grey background. Pseudo masks mark a band around every shape boundary and a random blob as 255
(unconfident), like CLIP-ES masks after the confidence threshold; ground truth has no 255.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from clipseg_cli.io.masks import IGNORE_LABEL, save_mask

PALETTE = np.array([(220, 40, 40), (40, 190, 60), (50, 80, 230), (230, 200, 30), (200, 60, 220), (40, 200, 210)], np.float32)


def make_sample(rng: np.random.Generator, size: int, num_classes: int, band: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (image uint8 RGB, pseudo mask with 255, exact GT) triple of ``size`` x ``size``."""
    if not 1 <= num_classes <= len(PALETTE):
        raise ValueError(f"1..{len(PALETTE)} classes")
    grey = rng.uniform(90, 160)
    image = np.full((size, size, 3), grey, np.float32) + rng.normal(0, 12, (size, size, 3))
    gt = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.integers(1, num_classes + 1))
        shape = np.zeros((size, size), np.uint8)
        w, h = (int(v) for v in rng.integers(size // 3, size * 2 // 3, 2))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        if rng.random() < 0.5:
            shape[y : y + h, x : x + w] = 1
        else:
            cv2.ellipse(shape, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
        colour = PALETTE[cls - 1] + rng.normal(0, 10, 3)
        image[shape == 1] = colour + rng.normal(0, 12, (int(shape.sum()), 3))
        gt[shape == 1] = cls
    image = np.clip(image, 0, 255).astype(np.uint8)
    pseudo = gt.copy()
    edges = cv2.morphologyEx(gt, cv2.MORPH_GRADIENT, np.ones((2 * band + 1, 2 * band + 1), np.uint8)) > 0
    pseudo[edges] = IGNORE_LABEL
    cy, cx = (int(v) for v in rng.integers(0, size, 2))
    cv2.circle(pseudo, (cx, cy), max(2, size // 12), IGNORE_LABEL, -1)
    return image, pseudo, gt


def write_shapes_dataset(root: Path, n: int, size: int = 64, num_classes: int = 3, seed: int = 0) -> Path:
    """Write ``root/images/s<i>.png``, ``root/masks/s<i>.png`` (pseudo) and ``root/gt/s<i>.png``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks", "gt"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, pseudo, gt = make_sample(rng, size, num_classes)
        Image.fromarray(image).save(root / "images" / f"s{i:03d}.png")
        save_mask(root / "masks" / f"s{i:03d}.png", pseudo)
        save_mask(root / "gt" / f"s{i:03d}.png", gt)
    return root
