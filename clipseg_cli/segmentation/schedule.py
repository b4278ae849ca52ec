"""SGD with DeepLab's parameter groups and the poly learning-rate schedule.

Groups (Caffe ``lr_mult`` / ``decay_mult`` of DeepLab, as deeplab-pytorch trains it):
backbone convolutions 1x lr with weight decay; ASPP weights 10x lr with weight decay; ASPP biases
20x lr without weight decay; trainable BatchNorm parameters (random init only) 1x lr without
weight decay. Frozen parameters are left out.
"""

from __future__ import annotations

import torch
from torch import nn

from clipseg_cli.segmentation.deeplab import DeepLabV2

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power`` (0 at and after ``max_iter``)."""
    if max_iter <= 0:
        return base_lr
    frac = min(max(iteration, 0), max_iter) / max_iter
    return base_lr * (1.0 - frac) ** power


def build_optimizer(
    model: DeepLabV2, lr: float, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY
) -> torch.optim.SGD:
    """SGD over the groups described in the module docstring; each group keeps its ``lr_mult``."""
    conv, norm = [], []
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            conv += [p for p in module.parameters(recurse=False) if p.requires_grad]
        elif isinstance(module, nn.BatchNorm2d):
            norm += [p for p in module.parameters(recurse=False) if p.requires_grad]
    head_w = [c.weight for c in model.head.convs]
    head_b = [c.bias for c in model.head.convs]
    groups = [
        {"params": conv, "lr_mult": 1.0, "weight_decay": weight_decay, "name": "backbone"},
        {"params": head_w, "lr_mult": 10.0, "weight_decay": weight_decay, "name": "head.weight"},
        {"params": head_b, "lr_mult": 20.0, "weight_decay": 0.0, "name": "head.bias"},
    ]
    if norm:
        groups.append({"params": norm, "lr_mult": 1.0, "weight_decay": 0.0, "name": "backbone.bn"})
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * lr_mult``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
