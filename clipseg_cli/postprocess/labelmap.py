"""From per-channel scores to a uint8 label map with 255 where confidence is low."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from clipseg_cli.io.masks import IGNORE_LABEL


def label_map(scores: np.ndarray, channel_labels: Sequence[int], min_confidence: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Argmax over ``scores`` (C, H, W), mapped through ``channel_labels`` (C values).

    Returns (mask uint8, confidence float32). Pixels whose max score is below
    ``min_confidence`` become 255 (ignored by the confidence-guided loss).
    """
    lut = np.asarray(channel_labels, dtype=np.uint8)
    if lut.shape[0] != scores.shape[0]:
        raise ValueError("one label per score channel is needed")
    best = scores.argmax(axis=0)
    confidence = scores.max(axis=0).astype(np.float32)
    mask = lut[best]
    if min_confidence is not None:
        mask[confidence < min_confidence] = IGNORE_LABEL
    return mask, confidence
