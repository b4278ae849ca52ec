"""CAA: class-aware attention-based affinity (CLIP-ES section 3.3).

The affinity comes from the ViT's own attention: averaged over the last blocks,
made doubly stochastic by Sinkhorn, symmetrised, squared (t = 2). Each class map
is propagated only inside the boxes around its own high-scoring regions.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from clipseg_cli.cam.normalize import minmax

SINKHORN_ROUNDS = 3


def affinity_from_attention(mean_attention: torch.Tensor, rounds: int = SINKHORN_ROUNDS) -> torch.Tensor:
    """Attention averaged over heads and blocks (1+N, 1+N) -> R = S @ S over the N patch tokens (float32)."""
    t = mean_attention[1:, 1:].float()
    for _ in range(rounds):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    s = (t + t.T) / 2
    return s @ s


def box_mask(grid_cam: np.ndarray, lam: float) -> np.ndarray:
    """Union of the bounding boxes of the regions where ``uint8(cam*255) > int(lam * max)``.

    Keeps the reference's exclusive box ends, so the last grid row and column are never inside.
    """
    height, width = grid_cam.shape
    scoremap = (grid_cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(scoremap, int(lam * np.max(scoremap)), 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros((height, width), dtype=np.float32)
    for contour in contours:
        x, y, bw, bh = cv2.boundingRect(contour)
        mask[y : min(y + bh, height - 1), x : min(x + bw, width - 1)] = 1.0
    return mask


def refine_cams(affinity: torch.Tensor, grid_cams: np.ndarray, lam: float) -> np.ndarray:
    """``refined_i = sum_j R_ij mask_j cam_j`` per class, min-max normalised: (K, h', w') float32."""
    if grid_cams.shape[0] == 0:
        return grid_cams.astype(np.float32)
    k, height, width = grid_cams.shape
    masked = np.stack([box_mask(c, lam) * c for c in grid_cams]).reshape(k, -1)
    source = torch.from_numpy(masked).to(affinity.device, torch.float32)
    refined = (affinity @ source.T).T.reshape(k, height, width).cpu().numpy()
    return np.stack([minmax(r) for r in refined])
