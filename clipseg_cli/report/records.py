"""The data the review page is built from: per-image statistics, records, sorting, filters.

Everything here is pure (arrays and dicts in, JSON-ready values out) so the page's numbers
can be unit-tested without a browser. Label values follow the masks: 0 background,
``1 + c`` class c, 255 ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from clipseg_cli.evaluation.confusion import (
    ConfusionAccumulator,
    metrics_from_confusion,
)
from clipseg_cli.evaluation.report import mask_report
from clipseg_cli.io.masks import IGNORE_LABEL

# --sort keys and their "worst first" direction (True: descending).
SORT_KEYS: dict[str, bool] = {
    "confidence": False,  # lowest mean CRF confidence first
    "ignored": True,  # largest ignored (255) share first
    "area": False,  # smallest foreground share first
    "name": False,
    "iou": False,  # with --gt: lowest IoU first
    "seconds": True,  # slowest first
}
CLI_SORT_KEYS = ("confidence", "ignored", "area", "name", "iou")

# Where each sort key lives in a record.
_SORT_FIELDS = {
    "confidence": "confidence",
    "ignored": "ignored",
    "area": "foreground",
    "iou": "iou",
}

IGNORED_BINS = 20  # 5 % wide bins of the ignored-fraction histogram


class LabelValueError(ValueError):
    """A mask holds a label value that is neither a class of the run nor 255."""


def mask_stats(mask: np.ndarray, n_labels: int, confidence: np.ndarray | None = None) -> dict[str, Any]:
    """Statistics of one pseudo mask (and, given, its CRF confidence map).

    ``n_labels`` counts background: label values 0..n_labels-1 and 255 are valid.
    Returns ``size`` [w, h], ``ignored`` (share of 255 pixels), ``areas`` ([label, share]
    for every label present but 255, largest first) and ``confidence`` (mean of the map,
    or None).
    """
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError("a mask is a non-empty 2-D label map")
    total = mask.size
    # Pillow's histogram of an 8-bit image is several times faster than np.bincount.
    counts = np.asarray(Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="L").histogram(), dtype=np.int64)
    bad = np.flatnonzero(counts[n_labels:IGNORE_LABEL])
    if bad.size:
        values = ", ".join(str(int(v) + n_labels) for v in bad[:5])
        raise LabelValueError(f"label values {values} outside 0..{n_labels - 1} and 255 (the run's classes)")
    present = [int(v) for v in np.flatnonzero(counts[:n_labels])]
    areas = sorted(([v, counts[v] / total] for v in present), key=lambda p: (-p[1], p[0]))
    stats: dict[str, Any] = {
        "size": [int(mask.shape[1]), int(mask.shape[0])],
        "ignored": float(counts[IGNORE_LABEL] / total),
        "areas": [[int(v), float(a)] for v, a in areas],
        "confidence": None,
    }
    if confidence is not None:
        conf = np.asarray(confidence)
        if conf.size:
            value = float(conf.mean(dtype=np.float64))
            stats["confidence"] = value if math.isfinite(value) else None
    return stats


def gt_stats(mask: np.ndarray, gt: np.ndarray, n_labels: int) -> dict[str, Any]:
    """One image scored against its GT label map with ``wsss-label eval``'s code: ``iou`` is
    the image's mIoU (classes in its GT, predicted 255 left out) and ``hist`` the sparse
    (gt, pred) joint histogram ([flat indices, counts]) from which the run's confusion
    matrix is summed later without reading the files again. Raises ValueError on a size
    mismatch, LabelRangeError on label values outside the classes."""
    acc = ConfusionAccumulator(n_labels)
    acc.add(gt, mask)
    flat = acc.hist.ravel()
    nz = np.flatnonzero(flat)
    return {"iou": metrics_from_confusion(acc.matrix("exclude")).miou, "hist": [nz.tolist(), flat[nz].tolist()]}


def foreground(areas: Sequence[Sequence[float]]) -> float:
    """Share of pixels labelled with a class (neither background nor ignored)."""
    return float(sum(a for v, a in areas if int(v) != 0))


def make_record(
    entry: dict[str, Any],
    stem: str,
    label_ids: Sequence[int],
    stats: dict[str, Any],
    gt: dict[str, Any] | None = None,
    photo: str | None = None,
    overlay: str = "mask",
) -> dict[str, Any]:
    """One image of the page: run.json's entry joined with its mask statistics (and GT score).

    The mean confidence is run.json's (recorded by every run with the CRF), else the one
    computed from the image's cams file (``stats``), else None.

    ``photo`` says where the full-size view takes the photo from: ``"orig"`` (the image
    file itself), ``"copy"`` (a JPEG made for formats browsers do not show) or None;
    ``overlay`` its overlay: ``"mask"`` (the mask PNG, coloured by the page) or ``"png"``
    (report/overlays/, rendered for masks not in the VOC palette).
    """
    confidence = entry.get("confidence")  # run.json's figure (any run with the CRF), else the cams file's
    if not isinstance(confidence, (int, float)) or isinstance(confidence, bool) or not math.isfinite(confidence):
        confidence = stats["confidence"]
    seconds = entry.get("seconds")
    if isinstance(seconds, dict):
        seconds = {k: float(v) for k, v in seconds.items() if isinstance(v, (int, float))} or None
    else:
        seconds = None
    return {
        "image": entry["image"],
        "stem": stem,
        "labels": [int(i) for i in label_ids],
        "areas": stats["areas"],
        "foreground": foreground(stats["areas"]),
        "ignored": stats["ignored"],
        "confidence": None if confidence is None else float(confidence),
        "seconds": seconds,
        "size": stats["size"],
        "iou": None if gt is None else gt["iou"],
        "has_gt": gt is not None,
        "photo": photo,
        "overlay": overlay,
        "redo": entry.get("redo") if isinstance(entry.get("redo"), int) else None,
    }


def _value(record: dict[str, Any], key: str) -> float | None:
    if key == "seconds":
        seconds = record.get("seconds")
        return None if not seconds else seconds.get("total")
    return record.get(_SORT_FIELDS[key])


def sort_records(records: Iterable[dict[str, Any]], key: str = "confidence", descending: bool | None = None) -> list[dict[str, Any]]:
    """Records in review order: worst first for ``key`` unless ``descending`` says otherwise.

    Missing values (no confidence, no GT, no timing) always go last; ties keep name order.
    The page's script sorts the same way.
    """
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; one of {', '.join(SORT_KEYS)}")
    by_name = sorted(records, key=lambda r: r["image"])
    if key == "name":
        return by_name[::-1] if descending else by_name
    desc = SORT_KEYS[key] if descending is None else descending
    known = [r for r in by_name if _value(r, key) is not None]
    unknown = [r for r in by_name if _value(r, key) is None]
    known.sort(key=lambda r: _value(r, key), reverse=desc)  # stable either way: ties stay in name order
    return known + unknown


def filter_by_class(records: Iterable[dict[str, Any]], label: int) -> list[dict[str, Any]]:
    """The records whose image-level labels include ``label`` (a mask value, 1 + class)."""
    return [r for r in records if label in r["labels"]]


def class_histogram(records: Iterable[dict[str, Any]], n_labels: int) -> list[int]:
    """Images per label value (index 0, background, is always 0: it is never an image label)."""
    counts = [0] * n_labels
    for r in records:
        for label in r["labels"]:
            if 0 <= label < n_labels:
                counts[label] += 1
    return counts


def ignored_histogram(records: Iterable[dict[str, Any]], bins: int = IGNORED_BINS) -> list[int]:
    """Images per ignored-fraction bin ``[k/bins, (k+1)/bins)``; 100 % falls in the last bin."""
    counts = [0] * bins
    for r in records:
        k = min(bins - 1, max(0, int(r["ignored"] * bins)))
        counts[k] += 1
    return counts


def confidence_histogram(records: Iterable[dict[str, Any]], bins: int = IGNORED_BINS) -> list[int] | None:
    """Images per mean-confidence bin over 0..1, or None when no image has a confidence."""
    values = [r["confidence"] for r in records if r["confidence"] is not None]
    if not values:
        return None
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    return counts


def gt_report(hists: Iterable[Sequence[Sequence[int]] | None], names: Sequence[str]) -> dict[str, Any] | None:
    """``wsss-label eval``'s report (masks mode, predicted 255 excluded) summed from the
    per-image sparse histograms of :func:`gt_stats`; None when no image has GT."""
    acc = ConfusionAccumulator(len(names))
    for hist in hists:
        if hist is None:
            continue
        idx, counts = hist
        np.add.at(acc.hist.reshape(-1), np.asarray(idx, dtype=np.int64), np.asarray(counts, dtype=np.int64))
        acc.n_images += 1
    if acc.n_images == 0:
        return None
    return mask_report(names, acc.matrix("exclude"), acc.n_images, acc.valid_pixels, acc.pred_ignored_pixels, "exclude")


def median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    return float(np.median(np.asarray(values, dtype=np.float64)))
