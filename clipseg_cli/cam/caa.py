"""CAA: class-aware attention-based affinity (CLIP-ES section 3.3).

The affinity comes from the ViT's own attention: averaged over the last blocks,
made doubly stochastic by Sinkhorn, symmetrised, squared (t = 2). Each class map
is propagated only inside the boxes around its own high-scoring regions.

The boxes: ``box_mask`` is the reference's OpenCV code (threshold, contours, bounding
rectangles); ``box_masks_torch`` computes the same masks with tensor operations on any
device, for many maps at once (used on a GPU, where a round trip per label would stall it).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SINKHORN_ROUNDS = 3
# box_masks_torch grows components a few 3x3 steps at a time between checks for convergence
# (each check waits for the device).
BOX_STEPS_PER_CHECK = 8


def affinity_from_attention(mean_attention: torch.Tensor, rounds: int = SINKHORN_ROUNDS) -> torch.Tensor:
    """Attention averaged over heads and blocks (..., 1+N, 1+N) -> R = S @ S over the N patch tokens (float32)."""
    t = mean_attention[..., 1:, 1:].float()
    for _ in range(rounds):
        t = t / t.sum(dim=-2, keepdim=True)
        t = t / t.sum(dim=-1, keepdim=True)
    s = (t + t.transpose(-2, -1)) / 2
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


def box_masks_torch(grid_cams: torch.Tensor, lam: float) -> torch.Tensor:
    """``box_mask`` of each of (K, h, w) maps, as tensor operations on their device: (K, h, w) float32.

    The contours' bounding rectangles are those of the 8-connected components of the
    thresholded map. Every foreground pixel starts with its own box; 3x3 max-pooling
    restricted to the foreground spreads the (-top, -left, bottom, right) extremes through
    each component until nothing changes, leaving each pixel with its component's box.
    The union of the boxes (each clipped as the reference does) is painted with a 2-D
    difference array. Convergence is checked every ``BOX_STEPS_PER_CHECK`` steps, once for
    all maps.
    """
    k, height, width = grid_cams.shape
    device = grid_cams.device
    if k == 0:
        return grid_cams.new_zeros(grid_cams.shape)
    scores = (grid_cams.float() * 255).to(torch.uint8)
    thresholds = torch.floor(lam * scores.amax(dim=(1, 2)).double())  # int(lam * max), max >= 0
    fg = scores.double() > thresholds[:, None, None]  # (K, h, w)

    rows = torch.arange(height, device=device, dtype=torch.float32)[:, None].expand(height, width)
    cols = torch.arange(width, device=device, dtype=torch.float32)[None, :].expand(height, width)
    boxes = torch.stack([-rows, -cols, rows, cols])[None].expand(k, 4, height, width)
    outside = torch.full((), float("-inf"), device=device)  # made on the device: no copy, no wait
    inside = fg[:, None]
    boxes = torch.where(inside, boxes, outside)
    for _ in range(height * width):  # a component's diameter is below its pixel count
        before = boxes
        for _ in range(BOX_STEPS_PER_CHECK):
            boxes = torch.where(inside, F.max_pool2d(boxes, 3, stride=1, padding=1), outside)
        if torch.equal(before, boxes):
            break

    # Each foreground pixel adds its component's box, clipped to exclude the last row and column.
    top, left = -boxes[:, 0], -boxes[:, 1]
    bottom = boxes[:, 2].clamp(max=height - 2) + 1  # exclusive ends
    right = boxes[:, 3].clamp(max=width - 2) + 1
    valid = fg & (bottom > top) & (right > left)
    top, left, bottom, right = (torch.where(valid, t, 0.0).long() for t in (top, left, bottom, right))
    weight = valid.reshape(k, -1).long()
    corners = torch.zeros(k, (height + 1) * (width + 1), dtype=torch.long, device=device)
    for r, c, sign in ((top, left, 1), (top, right, -1), (bottom, left, -1), (bottom, right, 1)):
        corners.scatter_add_(1, (r * (width + 1) + c).reshape(k, -1), sign * weight)
    painted = corners.reshape(k, height + 1, width + 1).cumsum(dim=1).cumsum(dim=2)
    return (painted[:, :height, :width] > 0).float()


def box_masks(grid_cams: torch.Tensor, lam: float) -> torch.Tensor:
    """``box_mask`` of each of (K, h, w) maps: OpenCV on the CPU, ``box_masks_torch`` elsewhere (same masks)."""
    if grid_cams.device.type != "cpu":
        return box_masks_torch(grid_cams, lam)
    maps = grid_cams.float().numpy()
    return torch.from_numpy(np.stack([box_mask(c, lam) for c in maps]) if len(maps) else maps.copy())


def refine_grid_cams(
    affinity: torch.Tensor, grid_cams: torch.Tensor, lam: float, owner: torch.Tensor, slot: torch.Tensor, slots: int
) -> torch.Tensor:
    """``refined_i = sum_j R_ij mask_j cam_j`` per channel with its image's affinity, min-max normalised.

    ``affinity`` (B, N, N); ``grid_cams`` (K, h', w'); channel k belongs to image ``owner[k]``
    where it is the ``slot[k]``-th of at most ``slots`` channels. Returns (K, h', w') float32
    on the same device.
    """
    from clipseg_cli.cam.gradcam import minmax_rows

    k, height, width = grid_cams.shape
    if k == 0:
        return grid_cams.float()
    source = (box_masks(grid_cams, lam).to(grid_cams.device) * grid_cams).reshape(k, -1).float()
    batch, n = affinity.shape[0], affinity.shape[-1]
    if batch == 1:
        refined = (affinity[0] @ source.T).T
    else:
        padded = source.new_zeros(batch, slots, n)
        padded[owner, slot] = source
        refined = torch.bmm(affinity, padded.transpose(1, 2)).transpose(1, 2)[owner, slot]
    return minmax_rows(refined).reshape(k, height, width)


def refine_cams(affinity: torch.Tensor, grid_cams: np.ndarray, lam: float) -> np.ndarray:
    """One image: ``affinity`` (N, N) and (K, h', w') CAMs -> refined (K, h', w') float32 numpy."""
    cams = torch.from_numpy(np.ascontiguousarray(grid_cams, dtype=np.float32)).to(affinity.device)
    owner = torch.zeros(len(cams), dtype=torch.long, device=affinity.device)
    slot = torch.arange(len(cams), device=affinity.device)
    return refine_grid_cams(affinity[None], cams, lam, owner, slot, len(cams)).cpu().numpy()


def channel_slots(labels_per_image: Sequence[int]) -> tuple[list[int], list[int]]:
    """(owner, slot) of each channel when image b has ``labels_per_image[b]`` channels."""
    owner = [b for b, n in enumerate(labels_per_image) for _ in range(n)]
    slot = [i for n in labels_per_image for i in range(n)]
    return owner, slot
