"""The confidence-guided loss: cross-entropy that ignores pixels labelled 255; a class-balanced variant.

Logits (N, C, h, w) at output stride 8 are upsampled bilinearly to the label size before the loss,
so a pixel labelled 255 contributes exactly nothing: zero loss and zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipseg_cli.io.masks import IGNORE_LABEL
from clipseg_cli.segmentation.deeplab import upsample_logits


def confidence_guided_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over pixels whose label is not 255 (0 when every pixel is ignored)."""
    logits = upsample_logits(logits, tuple(target.shape[-2:]))
    valid = target != IGNORE_LABEL
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL)


def balanced_class_weights(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights for a batch: ``w_c = n / (K * n_c)`` for the K classes present, 0 otherwise.

    ``n`` is the number of labelled (non-255) pixels, ``n_c`` those of class c. With these weights
    the weighted mean equals the mean over present classes of each class's mean loss, so every
    class present in the batch weighs the same whatever its area (COCO's "balanced CE").
    """
    labels = target[target != IGNORE_LABEL]
    counts = torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes].to(torch.float64)
    present = counts > 0
    k = int(present.sum())
    weights = torch.zeros(num_classes, dtype=torch.float64, device=target.device)
    if k:
        weights[present] = counts.sum() / (k * counts[present])
    return weights.to(torch.float32)


def balanced_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced cross-entropy ignoring 255: mean over present classes of per-class mean CE."""
    logits = upsample_logits(logits, tuple(target.shape[-2:]))
    valid = target != IGNORE_LABEL
    if not bool(valid.any()):
        return logits.sum() * 0.0
    weights = balanced_class_weights(target, logits.shape[1])
    per_pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL, reduction="none")
    w = weights[target.clamp(max=logits.shape[1] - 1)] * valid
    return (per_pixel * w).sum() / valid.sum()


LOSSES = {"ce": confidence_guided_ce, "balanced": balanced_ce}
