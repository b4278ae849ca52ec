"""Scoring CAMs the way CAM papers do: background where every CAM is below a threshold t.

A pixel's foreground label is ``1 + labels[argmax_k cam_k]``; it becomes background (0)
at threshold t when ``max_k cam_k < t`` (compared in float32). All thresholds are scored
in one pass: per image one np.bincount over (how many thresholds the pixel's max
reaches, GT label, foreground label), from which every threshold's confusion matrix
follows by prefix / suffix sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clipseg_cli.evaluation.confusion import LabelRangeError
from clipseg_cli.io.masks import IGNORE_LABEL

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05..0.95


def cam_argmax(cams: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground label map uint8 = 1 + labels[argmax], max CAM float32) for (K, H, W) CAMs.

    Ties go to the first CAM, as with argmax. With K = 0 every pixel is background with
    max -inf. (A loop over K is several times faster than argmax over the first axis.)
    """
    shape = cams.shape[1:]
    if cams.shape[0] == 0:
        return np.zeros(shape, np.uint8), np.full(shape, -np.inf, np.float32)
    lut = 1 + np.asarray(labels, dtype=np.int64)
    if lut.min() < 1 or lut.max() >= IGNORE_LABEL:
        raise ValueError("CAM labels must be class indices 0..253")
    fg = np.full(shape, lut[0], np.uint8)
    peak = np.array(cams[0], dtype=np.float32)
    for k in range(1, cams.shape[0]):
        np.copyto(fg, np.uint8(lut[k]), where=cams[k] > peak)
        np.maximum(peak, cams[k], out=peak)
    return fg, peak


def cam_prediction(cams: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """The uint8 label map of CAMs at one threshold (background where max < t)."""
    fg, peak = cam_argmax(cams, labels)
    return np.where(peak >= np.float32(threshold), fg, 0).astype(np.uint8)


@dataclass
class CamSweep:
    """Accumulates one confusion matrix per threshold over images, reading each image once."""

    n_labels: int
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    hist: np.ndarray = field(init=False)
    n_images: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.thresholds, dtype=np.float32)
        if t.ndim != 1 or t.size == 0 or np.any(np.diff(t) <= 0):
            raise ValueError("thresholds must be a non-empty increasing sequence")
        self._t32 = t
        n = self.n_labels
        # hist[k, g, c]: pixels with GT g, foreground label c whose max CAM reaches exactly
        # the first k thresholds (k = 0..T).
        self.hist = np.zeros((t.size + 1, n, n), dtype=np.int64)

    def add(self, gt: np.ndarray, cams: np.ndarray, labels: np.ndarray) -> None:
        """Count one image: GT uint8 (H, W), CAMs (K, H, W), labels (K,) 0-based classes."""
        n = self.n_labels
        if cams.shape[1:] != gt.shape:
            raise ValueError(f"CAM size {cams.shape[1:]} differs from the GT's {gt.shape}")
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() + 1 >= n):
            bad = ", ".join(str(v) for v in sorted({int(v) for v in labels if not 0 <= v < n - 1}))
            raise ValueError(f"CAM labels {bad} are not class indices 0..{n - 2}")
        gt_flat = gt.ravel()
        gt_hist = np.bincount(gt_flat, minlength=256)
        bad_gt = np.flatnonzero(gt_hist[n:IGNORE_LABEL])
        if bad_gt.size:
            raise LabelRangeError("GT", (bad_gt + n).tolist(), n)
        valid = gt_flat != IGNORE_LABEL
        fg, peak = cam_argmax(cams, labels)
        peak = peak.ravel()[valid]
        # How many thresholds each pixel's max reaches (t <= max, in float32); faster than
        # searchsorted for a short list of thresholds.
        reached = np.zeros(peak.shape, np.intp)
        for t in self._t32:
            reached += peak >= t
        idx = reached
        idx *= n
        idx += gt_flat[valid]
        idx *= n
        idx += fg.ravel()[valid]
        self.hist += np.bincount(idx, minlength=self.hist.size).reshape(self.hist.shape)
        self.n_images += 1

    def matrices(self) -> np.ndarray:
        """(T, n, n) confusion matrices, one per threshold."""
        # At threshold index i a pixel is foreground iff it reaches more than i thresholds.
        suffix = np.cumsum(self.hist[::-1], axis=0)[::-1]  # suffix[k] = sum_{k' >= k} hist[k']
        prefix = np.cumsum(self.hist.sum(axis=2), axis=0)  # prefix[k][g] = sum_{k' <= k}, any c
        out = suffix[1:].copy()
        out[:, :, 0] += prefix[:-1]
        return out

    @property
    def valid_pixels(self) -> int:
        return int(self.hist.sum())
