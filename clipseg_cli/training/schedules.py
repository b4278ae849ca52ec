"""Learning-rate schedules of the learned methods, as plain functions of the iteration.

Every function is pure (``base_lr``, ``iteration``, the run's length and its own settings), so a
resumed run gets exactly the rates of an uninterrupted one. :func:`set_lr` applies a rate to every
optimizer group, scaled by the group's ``lr_mult``.
"""

from __future__ import annotations

import math

import torch


def poly_lr(base_lr: float, iteration: int, max_iter: int, power: float) -> float:
    """``base_lr * (1 - iteration / max_iter) ** power`` (0 at and after ``max_iter``)."""
    if max_iter <= 0:
        return base_lr
    frac = min(max(iteration, 0), max_iter) / max_iter
    return base_lr * (1.0 - frac) ** power


def cosine_lr(base_lr: float, iteration: int, iters: int, min_lr: float = 0.0) -> float:
    """Cosine annealing from ``base_lr`` to ``min_lr`` over ``iters``."""
    frac = min(max(iteration, 0), iters) / max(iters, 1)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


def warmup_cosine_lr(base_lr: float, iteration: int, iters: int, warmup: float, min_fraction: float = 0.01, start: float = 1e-6) -> float:
    """Cosine decay from ``base_lr`` to ``min_fraction`` of it over ``iters``, its first ``warmup``
    fraction scaled by a linear warm-up from ``start`` (mmseg's ``CosineAnnealing`` + linear warm-up)."""
    lr = cosine_lr(base_lr, iteration, iters, base_lr * min_fraction)
    warm = int(round(warmup * iters))
    if iteration < warm:
        lr *= 1.0 - (1.0 - iteration / warm) * (1.0 - start)
    return lr


def warmup_poly_lr(base_lr: float, iteration: int, iters: int, warmup: int, ratio: float, power: float) -> float:
    """Linear warm-up from ``ratio * base_lr`` to ``base_lr`` over ``warmup`` iterations, then poly decay
    over the remaining ones."""
    if iteration < warmup:
        return base_lr * (ratio + (1 - ratio) * iteration / warmup)
    span = max(1, iters - warmup)
    return base_lr * (1 - min(iteration - warmup, span) / span) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * lr_mult``."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
