"""Image-level labels against ground-truth labels (``wsss-label eval-labels``).

Per class over the images both files name: precision ``TP / (TP + FP)``, recall
``TP / (TP + FN)``, F1 ``2 TP / (2 TP + FP + FN)`` (None where a ratio is 0/0) and average
precision (AP) over the images ranked by the class's score; mAP is the mean AP over the
classes with at least one positive image. AP is the usual step sum
``sum_k (R_k - R_{k-1}) P_k`` over the distinct scores from the highest down (images with
equal scores enter together), as scikit-learn's ``average_precision_score``.

Scores: an entry ``{"labels": [...], "scores": {...}}`` (``labels.auto.json``) gives each
class its score (a class it does not list: 0; a label without a score: 1); a plain list of
labels gives 1 to its labels and 0 to the rest. When every entry also has ``background`` (the
best background word's score), :func:`label_report` adds a sweep of the ``--label-threshold``
rule over :data:`SWEEP_THRESHOLDS`, so a threshold can be chosen without rerunning CLIP.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clipseg_cli.auto_labels import choose_labels
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.data.image_list import image_stem
from clipseg_cli.data.labels import LabelIndex, normalise_key, read_labels_file, read_voc_annotations
from clipseg_cli.errors import ConfigError

SWEEP_THRESHOLDS: tuple[float, ...] = (
    0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
)  # fmt: skip


@dataclass
class ImageLabels:
    """Labels of images by stem, as class indices; with per-class scores where the file has them."""

    labels: dict[str, list[int]]
    scores: dict[str, np.ndarray]  # (C,) per image; every image has a row
    background: dict[str, float]  # the best background word's score, where recorded
    source: str


def read_image_labels(path: Path, class_set: ClassSet) -> ImageLabels:
    """A labels file (JSON, text/CSV, or ``labels.auto.json`` with scores) or a folder of VOC XML."""
    from clipseg_cli.data.labels import resolve_labels

    path = Path(path)
    index: LabelIndex = read_voc_annotations(path) if path.is_dir() else read_labels_file(path)
    raw = _raw_entries(path) if path.is_file() else {}
    n = len(class_set)
    out = ImageLabels({}, {}, {}, str(path))
    for key, names in index.labels.items():
        stem = image_stem(key)
        if stem in out.labels:
            raise ConfigError(f"{path}: two entries for image {stem!r}")
        indices, _ = resolve_labels(names, class_set, key)
        entry = raw.get(key)
        row = np.zeros(n, dtype=np.float64)
        row[list(indices)] = 1.0
        if isinstance(entry, dict) and isinstance(entry.get("scores"), dict):
            row[:] = 0.0
            for name, value in entry["scores"].items():
                if class_set.has(name) and isinstance(value, (int, float)):
                    row[class_set.index(name)] = float(value)
            for c in indices:
                if class_set.classes[c] not in entry["scores"]:
                    row[c] = 1.0
            if isinstance(entry.get("background"), (int, float)):
                out.background[stem] = float(entry["background"])
        out.labels[stem] = list(indices)
        out.scores[stem] = row
    return out


def _raw_entries(path: Path) -> dict[str, Any]:
    """A JSON labels file's entries by normalised key ({} for a text file)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError:
        return {}  # a text/CSV file: read_labels_file has read it
    if not isinstance(data, dict):
        return {}
    return {normalise_key(k, str(path)): v for k, v in data.items()}


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """AP of one class over images (see the module); None without a positive image."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    ranked, hits = np.asarray(scores, dtype=np.float64)[order], positive[order]
    tp = np.cumsum(hits)
    seen = np.arange(1, len(hits) + 1)
    ends = np.r_[np.flatnonzero(np.diff(ranked) != 0), len(ranked) - 1]  # last image of each score level
    precision = tp[ends] / seen[ends]
    recall = tp[ends] / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _counts(pred: Sequence[set[int]], gt: Sequence[set[int]], n_classes: int) -> np.ndarray:
    """(C, 3) true positives, false positives, false negatives per class."""
    counts = np.zeros((n_classes, 3), dtype=np.int64)
    for p, g in zip(pred, gt):
        for c in p & g:
            counts[c, 0] += 1
        for c in p - g:
            counts[c, 1] += 1
        for c in g - p:
            counts[c, 2] += 1
    return counts


def _summary(counts: np.ndarray, has_positive: np.ndarray) -> dict[str, float | None]:
    tp, fp, fn = (int(v) for v in counts.sum(axis=0))
    f1 = [_ratio(2 * int(t), 2 * int(t) + int(p) + int(n)) for (t, p, n), pos in zip(counts, has_positive) if pos]
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "macro_f1": float(np.mean([v for v in f1 if v is not None])) if f1 else None,
    }


def label_report(pred: ImageLabels, gt: ImageLabels, class_names: Sequence[str]) -> dict[str, Any]:
    """The JSON-ready report over the images both name (ConfigError when there are none)."""
    common = sorted(set(pred.labels) & set(gt.labels))
    if not common:
        raise ConfigError(f"{pred.source} and {gt.source} name no image in common (images are matched by path without extension)")
    n = len(class_names)
    pred_sets = [set(pred.labels[k]) for k in common]
    gt_sets = [set(gt.labels[k]) for k in common]
    truth = np.zeros((len(common), n), dtype=bool)
    for i, g in enumerate(gt_sets):
        truth[i, list(g)] = True
    scores = np.stack([pred.scores[k] for k in common])
    counts = _counts(pred_sets, gt_sets, n)
    has_positive = truth.any(axis=0)
    per_class: dict[str, dict[str, Any]] = {}
    aps = []
    for c, name in enumerate(class_names):
        tp, fp, fn = (int(v) for v in counts[c])
        ap = average_precision(scores[:, c], truth[:, c])
        if ap is not None:
            aps.append(ap)
        per_class[name] = {
            "positives": tp + fn, "predicted": tp + fp, "tp": tp,
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "ap": ap,
        }  # fmt: skip
    report: dict[str, Any] = {
        "mode": "labels",
        "n_images": len(common),
        "only_in_pred": len(set(pred.labels) - set(gt.labels)),
        "only_in_gt": len(set(gt.labels) - set(pred.labels)),
        "n_classes_with_positives": int(has_positive.sum()),
        "map": float(np.mean(aps)) if aps else None,
        **_summary(counts, has_positive),
        "exact_match": sum(p == g for p, g in zip(pred_sets, gt_sets)) / len(common),
        "per_class": per_class,
    }
    if all(k in pred.background for k in common):
        report["sweep"] = threshold_sweep(scores, [pred.background[k] for k in common], gt_sets, has_positive)
        best = max(report["sweep"], key=lambda row: -1.0 if row["f1"] is None else row["f1"])
        report["best_threshold"] = best["threshold"]
    return report


def threshold_sweep(
    scores: np.ndarray, background: Sequence[float], gt_sets: Sequence[set[int]], has_positive: np.ndarray
) -> list[dict[str, float | None]]:
    """Micro precision / recall / F1 and macro F1 of the labels the ``--label-threshold`` rule
    would choose from these scores, at each of :data:`SWEEP_THRESHOLDS`."""
    rows = []
    for t in SWEEP_THRESHOLDS:
        chosen = [set(choose_labels(row, bg, t)) for row, bg in zip(scores, background)]
        rows.append({"threshold": t, **_summary(_counts(chosen, gt_sets, scores.shape[1]), has_positive)})
    return rows
