"""Confusion matrices with np.bincount and the metrics derived from them.

Rows are ground truth, columns predictions; index 0 is background, ``1 + c`` class c.
GT 255 pixels never count. Predicted 255 pixels are either left out (``exclude``) or
counted as background (``background``); either way the number of valid GT pixels they
cover is kept so that ``ignored_fraction`` can be reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from clipseg_cli.io.masks import IGNORE_LABEL

PRED_IGNORE_MODES = ("exclude", "background")


class LabelRangeError(ValueError):
    """A label map holds a value that is neither a known class nor 255."""

    def __init__(self, which: str, values: Sequence[int], n_labels: int) -> None:
        self.which = which
        self.values = list(values)
        self.n_labels = n_labels
        shown = ", ".join(str(v) for v in self.values[:5])
        super().__init__(f"{which} has label values {shown} outside 0..{n_labels - 1} and 255")


def joint_histogram(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(256, 256) int64 counts of (gt value, predicted value) pairs over all pixels."""
    if gt.shape != pred.shape:
        raise ValueError(f"shape {pred.shape} of the prediction differs from the GT's {gt.shape}")
    idx = gt.astype(np.uint16).ravel()  # a fresh copy: safe to modify in place
    idx <<= 8
    idx |= pred.astype(np.uint8, copy=False).ravel()
    return np.bincount(idx, minlength=256 * 256).reshape(256, 256).astype(np.int64, copy=False)


def check_label_range(hist: np.ndarray, n_labels: int) -> None:
    """Raise LabelRangeError if GT or prediction values fall outside 0..n-1 and 255."""
    bad_gt = np.flatnonzero(hist[n_labels:IGNORE_LABEL].sum(axis=1))
    if bad_gt.size:
        raise LabelRangeError("GT", (bad_gt + n_labels).tolist(), n_labels)
    bad_pred = np.flatnonzero(hist[:, n_labels:IGNORE_LABEL].sum(axis=0))
    if bad_pred.size:
        raise LabelRangeError("prediction", (bad_pred + n_labels).tolist(), n_labels)


@dataclass
class ConfusionAccumulator:
    """Sums (gt, pred) pair counts over images; derives the n x n matrix on demand."""

    n_labels: int
    hist: np.ndarray = field(init=False)
    n_images: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.n_labels <= IGNORE_LABEL:
            raise ValueError("between 1 and 255 labels (background included) are supported")
        self.hist = np.zeros((256, 256), dtype=np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Count one image (uint8 label maps of the same shape); checks the label range first."""
        hist = joint_histogram(gt, pred)
        check_label_range(hist, self.n_labels)
        self.hist += hist
        self.n_images += 1

    def matrix(self, pred_ignore: str = "exclude") -> np.ndarray:
        """The (n, n) confusion matrix; predicted 255 left out or counted as background."""
        if pred_ignore not in PRED_IGNORE_MODES:
            raise ValueError(f"pred_ignore must be one of {PRED_IGNORE_MODES}")
        n = self.n_labels
        conf = self.hist[:n, :n].copy()
        if pred_ignore == "background":
            conf[:, 0] += self.hist[:n, IGNORE_LABEL]
        return conf

    @property
    def valid_pixels(self) -> int:
        """Pixels whose GT is a class (not 255)."""
        return int(self.hist[: self.n_labels].sum())

    @property
    def pred_ignored_pixels(self) -> int:
        """Valid GT pixels predicted as 255."""
        return int(self.hist[: self.n_labels, IGNORE_LABEL].sum())


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_labels: int, pred_ignore: str = "exclude") -> np.ndarray:
    """The (n, n) confusion matrix of one pair of label maps."""
    acc = ConfusionAccumulator(n_labels)
    acc.add(gt, pred)
    return acc.matrix(pred_ignore)


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(a) / float(b) if b > 0 else None for a, b in zip(num.tolist(), den.tolist())]


@dataclass(frozen=True)
class Metrics:
    """Scores from one confusion matrix. Undefined ratios (0/0) are None."""

    iou: list[float | None]
    precision: list[float | None]
    recall: list[float | None]
    gt_pixels: list[int]
    pred_pixels: list[int]
    in_gt: list[bool]
    miou: float | None
    pixel_accuracy: float | None


def metrics_from_confusion(conf: np.ndarray) -> Metrics:
    """Per-class IoU / precision / recall, mIoU over classes present in the GT, pixel accuracy.

    IoU_c = TP / (GT_c + Pred_c - TP); precision = TP / Pred_c; recall = TP / GT_c.
    A class that never occurs in the GT is reported but not averaged into mIoU.
    """
    conf = np.asarray(conf, dtype=np.int64)
    tp = np.diag(conf)
    gt_count = conf.sum(axis=1)
    pred_count = conf.sum(axis=0)
    union = gt_count + pred_count - tp
    iou = _ratio(tp, union)
    in_gt = (gt_count > 0).tolist()
    present = [v for v, p in zip(iou, in_gt) if p]
    total = int(conf.sum())
    return Metrics(
        iou=iou,
        precision=_ratio(tp, pred_count),
        recall=_ratio(tp, gt_count),
        gt_pixels=[int(v) for v in gt_count],
        pred_pixels=[int(v) for v in pred_count],
        in_gt=in_gt,
        miou=float(np.mean(present)) if present else None,
        pixel_accuracy=float(tp.sum()) / total if total else None,
    )
