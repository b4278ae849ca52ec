"""mIoU of a model on a held-out set (``retrain --val IMAGES GT``), via the shared confusion counts."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.evaluation.confusion import ConfusionAccumulator, metrics_from_confusion
from clipseg_cli.segmentation.dataset import Pair, load_pair


def evaluate_pairs(
    probabilities: Callable[[np.ndarray], np.ndarray],
    pairs: Sequence[Pair],
    num_classes: int,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Predict every image (argmax of ``probabilities``) and score it against its GT label map.

    Returns {"miou", "pixel_accuracy", "iou": {name: value}, "images"}; GT 255 is not counted.
    """
    acc = ConfusionAccumulator(num_classes)
    for pair in pairs:
        try:
            image, gt = load_pair(pair, num_classes)
        except ImageError as exc:
            raise ConfigError(f"--val: {exc}") from None
        pred = probabilities(image).argmax(axis=0).astype(np.uint8)
        acc.add(gt, pred)  # load_pair checked the GT labels against the class count
    m = metrics_from_confusion(acc.matrix())
    names = ["background", *class_names]
    return {
        "miou": m.miou,
        "pixel_accuracy": m.pixel_accuracy,
        "iou": {n: v for n, v, present in zip(names, m.iou, m.in_gt) if present},
        "images": acc.n_images,
    }
