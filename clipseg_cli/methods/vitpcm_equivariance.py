"""ViT-PCM's losses and the transforms of its two branches (paper sections 4-5, eqs. 1, 8).

- :func:`mce_loss`: multi-label BCE (eq. 1) on global-max-pooled per-patch softmax scores
  (eq. 3), background (channel 0) always a positive label;
- :func:`random_dihedral` / :func:`dihedral` / :func:`undo_dihedral`: the main branch's transform a
  (horizontal flip, vertical flip, transpose: section 6.1's flips and 90 degree rotations), exactly
  invertible on the patch grid;
- :func:`random_affine` / :func:`warp` / :func:`unwarp`: the second branch's translate + rotate +
  scale b (``F.affine_grid``, normalised coordinates, square inputs) and its inverse with a
  validity mask;
- :func:`mosaic` / :func:`unmosaic`: four images (a group of 4 along the batch) tiled 2x2 and split
  back (the merging m), an exact round trip;
- :func:`equivariance_loss`: eq. 8, the cross-entropy of the main branch's inverse-transformed patch
  distributions under the second branch's, averaged over the patches both branches see;
  :func:`label_target`: the authors' code's fixed target (the main branch restricted to the image's
  labels) for the same cross-entropy with the roles swapped.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EPS = 1e-6


def gmp_scores(probs: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) per-patch class probabilities -> (B, C) image scores, max over patches (eq. 3)."""
    return probs.flatten(2).amax(dim=2)


def mce_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 1: mean BCE over the K+1 classes between GMP scores and the 0/1 ``targets`` (B, C)."""
    scores = gmp_scores(probs).clamp(EPS, 1.0 - EPS)
    return F.binary_cross_entropy(scores, targets.to(scores.dtype))


def random_affine(batch: int, rng: torch.Generator, max_shift: float = 0.15, max_degrees: float = 30.0,
                  scales: tuple[float, float] = (0.8, 1.2)) -> torch.Tensor:  # fmt: skip
    """(B, 2, 3) matrices of ``F.affine_grid`` (output -> input coordinates in [-1, 1]) of a random
    rotation, isotropic scale and translation per image, drawn from ``rng``."""
    u = torch.rand(batch, 4, generator=rng)
    angle = (2 * u[:, 0] - 1) * math.radians(max_degrees)
    scale = scales[0] + (scales[1] - scales[0]) * u[:, 1]
    shift = (2 * u[:, 2:] - 1) * max_shift
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, :, 2] = shift
    return theta


def invert_affine(theta: torch.Tensor) -> torch.Tensor:
    """The inverse of (B, 2, 3) affine matrices."""
    a, t = theta[:, :, :2], theta[:, :, 2:]
    inv = torch.linalg.inv(a)
    return torch.cat([inv, -inv @ t], dim=2)


def warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Apply ``theta`` to (B, C, H, W): out(p) = x(theta p); outside the image is 0."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def unwarp(x: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo :func:`warp` with ``theta`` on (B, C, h, w) maps; also a (B, 1, h, w) mask of the
    positions that survive the round trip (inside the warped view and not mixed with its padding)."""
    inv = invert_affine(theta.float()).to(x)
    back = warp(x, inv)
    ones = torch.ones(x.shape[0], 1, *x.shape[2:], dtype=x.dtype, device=x.device)
    valid = warp(warp(ones, theta), inv) > 0.999
    return back, valid


def mosaic(x: torch.Tensor) -> torch.Tensor:
    """(4G, C, H, W) -> (G, C, 2H, 2W): images 4g..4g+3 tiled top-left, top-right, bottom-left, bottom-right."""
    b, c, h, w = x.shape
    if b % 4:
        raise ValueError(f"mosaic needs a multiple of 4 images, got {b}")
    x = x.reshape(b // 4, 2, 2, c, h, w)  # (G, row, col, C, H, W)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b // 4, c, 2 * h, 2 * w)


def unmosaic(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`mosaic`: (G, C, 2H, 2W) -> (4G, C, H, W)."""
    g, c, h2, w2 = x.shape
    if h2 % 2 or w2 % 2:
        raise ValueError(f"unmosaic needs even sides, got {h2}x{w2}")
    x = x.reshape(g, c, 2, h2 // 2, 2, w2 // 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(4 * g, c, h2 // 2, w2 // 2)


def mosaic_indices(batch: int) -> torch.Tensor:
    """Batch indices filled up to a multiple of 4 by cycling (the extra copies are dropped after)."""
    return torch.arange(4 * math.ceil(batch / 4)) % batch


def equivariance_loss(nu: torch.Tensor, mu: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 8, ``L_ET = -1/s sum_i sum_k nu_ik log mu_ik``: the cross-entropy between the (B, C, h, w)
    patch distributions of the second branch ``nu`` (c^-1 f(c(X))) and of the main branch ``mu``
    (a^-1 f(a(X))), averaged over the ``valid`` (B, 1, h, w) patches (all when None). Neither branch
    is detached: the gradient reaches ``nu`` through ``-log mu`` and ``mu`` through ``-nu / mu``."""
    per_patch = -(nu * mu.clamp_min(EPS).log()).sum(dim=1, keepdim=True)
    if valid is None:
        return per_patch.mean()
    weight = valid.to(per_patch.dtype)
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)


def label_target(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The authors' code's equivariance target from (B, C, h, w) patch distributions: classes absent
    from the image's (B, C) 0/1 ``targets`` zeroed, each present class divided by its maximum over
    the patches, each patch renormalised to sum to 1; no gradient."""
    t = probs.detach() * targets.to(probs.dtype)[:, :, None, None]
    t = t / t.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return t / t.sum(dim=1, keepdim=True).clamp_min(1e-12)


def random_dihedral(batch: int, rng: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """(B, 3) bool: per image, a horizontal flip, a vertical flip and a transpose (with a flip, a 90
    degree rotation), each with probability ``p``, drawn from ``rng``."""
    return torch.rand(batch, 3, generator=rng) < p


def dihedral(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Apply :func:`random_dihedral`'s ``flags`` to square (B, C, S, S) maps: flip left-right, then
    up-down, then transpose."""
    out = []
    for xi, (lr, ud, tr) in zip(x, flags.tolist()):
        xi = xi.flip(-1) if lr else xi
        xi = xi.flip(-2) if ud else xi
        out.append(xi.transpose(-1, -2) if tr else xi)
    return torch.stack(out)


def undo_dihedral(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`dihedral` (the same involutions in reverse order), exact on a patch grid."""
    out = []
    for xi, (lr, ud, tr) in zip(x, flags.tolist()):
        xi = xi.transpose(-1, -2) if tr else xi
        xi = xi.flip(-2) if ud else xi
        out.append(xi.flip(-1) if lr else xi)
    return torch.stack(out)
