"""The JSON-ready report of an evaluation (``report.json``)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from clipseg_cli.evaluation.confusion import Metrics, metrics_from_confusion


def per_class_table(names: Sequence[str], m: Metrics) -> dict[str, dict[str, Any]]:
    """``{class name: {iou, precision, recall, gt_pixels, pred_pixels, in_gt}}`` in label order."""
    return {
        name: {
            "label": i,
            "iou": m.iou[i],
            "precision": m.precision[i],
            "recall": m.recall[i],
            "gt_pixels": m.gt_pixels[i],
            "pred_pixels": m.pred_pixels[i],
            "in_gt": m.in_gt[i],
        }
        for i, name in enumerate(names)
    }


def mask_report(
    names: Sequence[str],
    conf: np.ndarray,
    n_images: int,
    valid_pixels: int,
    pred_ignored_pixels: int,
    pred_ignore: str,
) -> dict[str, Any]:
    """Report of label maps scored with one confusion matrix (``names`` include background)."""
    m = metrics_from_confusion(conf)
    return {
        "mode": "masks",
        "miou": m.miou,
        "pixel_accuracy": m.pixel_accuracy,
        "ignored_fraction": pred_ignored_pixels / valid_pixels if valid_pixels else 0.0,
        "pred_ignore": pred_ignore,
        "n_images": n_images,
        "n_classes_in_gt": int(sum(m.in_gt)),
        "valid_pixels": valid_pixels,
        "classes": list(names),
        "per_class": per_class_table(names, m),
        "confusion_matrix": np.asarray(conf).tolist(),
    }


def cam_report(
    names: Sequence[str],
    matrices: np.ndarray,
    thresholds: Sequence[float],
    n_images: int,
    valid_pixels: int,
    cam_key: str,
) -> dict[str, Any]:
    """Report of a CAM threshold sweep; the top-level scores are those at the best threshold.

    Ties go to the lowest threshold.
    """
    per_t = [metrics_from_confusion(c) for c in matrices]
    scores = [-1.0 if m.miou is None else m.miou for m in per_t]
    best = int(np.argmax(scores))
    report = mask_report(names, matrices[best], n_images, valid_pixels, 0, "exclude")
    report.update(
        {
            "mode": "cams",
            "cam_key": cam_key,
            "best_threshold": float(thresholds[best]),
            "sweep": [{"threshold": float(t), "miou": m.miou, "pixel_accuracy": m.pixel_accuracy} for t, m in zip(thresholds, per_t)],
        }
    )
    report.pop("pred_ignore")
    return report
