"""DSRG's WSSS losses as WeakCLIP uses them (paper section 3.3.5): balanced seeding loss (eq. 12)
and boundary loss (eq. 13) against the dense-CRF-refined prediction.

Both work at the prediction's resolution on a batch: ``log_probs`` (B, C, h, w) log-softmax over
(background, classes...), ``seeds`` (B, h, w) mask values (0 background, 1 + c, 255 ignored),
``labels`` (B, C) bool with background and the image's classes set.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from clipseg_cli.io.masks import IGNORE_LABEL
from clipseg_cli.postprocess.crf import CRFParams, dense_crf

# The CRF of the reference implementation's boundary loss (run at the prediction's resolution).
BOUNDARY_CRF = CRFParams(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=3.0, bilateral_compat=5.0)
PSI_FLOOR = 1e-4  # CRF probabilities are floored and renormalised, as the reference does


def seeds_at(seeds: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) integer seeds -> (B, h, w) by nearest neighbour."""
    if tuple(seeds.shape[-2:]) == tuple(size):
        return seeds.long()
    return F.interpolate(seeds[:, None].float(), size=size, mode="nearest")[:, 0].long()


def balanced_seed_loss(log_probs: torch.Tensor, seeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 12: ``-mean_{u in fg seeds} log P_u,seed - mean_{u in bg seeds} log P_u,0`` per image, then
    the batch mean. Foreground and background each weigh the same whatever their areas. Seeds
    of 255, or of a class the image is not labelled with, are not counted; an image without
    foreground (or background) seeds adds nothing for that term.

    The paper prints the background term without its log; DSRG (which it adopts) and the
    reference implementation take the log of both, as here.
    """
    num_classes = log_probs.shape[1]
    seeds = seeds.to(log_probs.device)
    index = torch.where(seeds == IGNORE_LABEL, torch.zeros_like(seeds), seeds).clamp(max=num_classes - 1)
    labelled = labels.to(log_probs.device).gather(1, index.flatten(1)).view_as(seeds)
    valid = (seeds != IGNORE_LABEL) & (seeds < num_classes) & labelled
    picked = log_probs.gather(1, index[:, None])[:, 0]
    loss = log_probs.new_zeros(())
    for mask in (valid & (seeds > 0), valid & (seeds == 0)):
        m = mask.to(log_probs.dtype)
        loss = loss - ((picked * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp(min=1.0)).mean()
    return loss


def crf_targets(probs: np.ndarray, rgb: np.ndarray, labels: np.ndarray, params: CRFParams = BOUNDARY_CRF) -> np.ndarray:
    """Psi(I, P) of eq. 13: the dense CRF of each image's prediction over its own classes.

    ``probs`` (B, C, h, w) float32 softmax, ``rgb`` (B, H, W, 3) uint8 (resized to h x w with area
    averaging), ``labels`` (B, C) bool. Classes an image is not labelled with get 0; the others are
    renormalised before the CRF, floored at 1e-4 and renormalised after it.
    """
    batch, num_classes, h, w = probs.shape
    out = np.zeros_like(probs, dtype=np.float32)
    for b in range(batch):
        image = rgb[b]
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        channels = np.flatnonzero(labels[b])
        p = probs[b, channels].astype(np.float32)
        p = p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)
        q = np.maximum(dense_crf(np.ascontiguousarray(image), p, params), PSI_FLOOR)
        out[b, channels] = q / q.sum(axis=0, keepdims=True)
    return out


def boundary_loss(log_probs: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Eq. 13: ``1/n sum_u sum_k Psi_u,k log(Psi_u,k / P_u,k)``, the KL divergence from the
    prediction to its CRF refinement, averaged over all positions (and images). ``psi`` is a
    constant target: no gradient flows through the CRF."""
    psi = psi.to(log_probs.device, log_probs.dtype).detach()
    return (torch.xlogy(psi, psi) - psi * log_probs).sum(dim=1).mean()
