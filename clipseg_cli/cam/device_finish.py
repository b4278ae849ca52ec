"""The finish step as tensor operations on the model's device (the GPU finish path).

``pipeline.finish`` does it on the CPU with OpenCV and pydensecrf. Here the same steps run
where the grid maps already are: bilinear resizing to full size (OpenCV's INTER_LINEAR:
half-pixel centres, no antialiasing), the dense CRF (torch backend), the label map and the
confidence, and OpenCV's INTER_NEAREST for masks of scaled-down images. The results of a
batch go back to the host in one asynchronous copy into pinned memory (``HostCopy``);
encoding and writing the files is left to the worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipseg_cli.io.masks import IGNORE_LABEL
from clipseg_cli.postprocess.crf import CRFParams

# (images [(H, W, 3) uint8], probabilities [(C, H, W) float32], params) -> [Q (C, H, W) float32],
# on their device: the dense CRF of several images at once.
BatchCRF = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], CRFParams], list[torch.Tensor]]


def resize_bilinear(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(K, h, w) -> (K, height, width) float32 as ``cv2.resize`` INTER_LINEAR (``normalize.resize_maps``)."""
    if maps.shape[-2:] == (height, width):
        return maps.float()
    if maps.shape[0] == 0:
        return maps.new_zeros(0, height, width, dtype=torch.float32)
    return F.interpolate(maps[None].float(), size=(height, width), mode="bilinear", align_corners=False)[0]


def resize_nearest(label_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(h, w) -> (height, width) with OpenCV's INTER_NEAREST source indices, ``floor(x * src / dst)`` in float64."""
    src_h, src_w = label_map.shape
    device = label_map.device
    ys = torch.floor(torch.arange(height, device=device, dtype=torch.float64) * (1.0 / (height / src_h)))
    xs = torch.floor(torch.arange(width, device=device, dtype=torch.float64) * (1.0 / (width / src_w)))
    ys = ys.long().clamp(max=src_h - 1)
    xs = xs.long().clamp(max=src_w - 1)
    return label_map.index_select(0, ys).index_select(1, xs)


def label_map_torch(scores: torch.Tensor, lut: torch.Tensor, min_confidence: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``postprocess.labelmap.label_map`` on a device: (mask uint8 (H, W), confidence float32 (H, W))."""
    confidence, best = scores.max(dim=0)
    mask = lut[best]
    if min_confidence is not None:
        mask = torch.where(confidence < min_confidence, torch.full_like(mask, IGNORE_LABEL), mask)
    return mask, confidence.float()


@dataclass
class FinishedMaps:
    """One image's outputs at its original size (tensors; on the device until ``HostCopy`` brings them back)."""

    mask: torch.Tensor  # (H, W) uint8
    confidence: torch.Tensor | None  # (H, W) float32, when the CRF ran
    cam: torch.Tensor | None  # (K, H, W) float32, when kept
    refined: torch.Tensor | None


@dataclass
class DeviceImage:
    """What the device finish needs of one image besides its grid maps."""

    size: tuple[int, int]  # original (H, W)
    work_size: tuple[int, int]  # (h, w) of the (maybe scaled-down) image the CRF sees
    work: torch.Tensor | None  # that image, (h, w, 3) uint8 on the device; only needed with a CRF
    lut: torch.Tensor  # (1 + K,) uint8 on the device: the label of each score channel, background first


def finish_on_device(
    images: Sequence[DeviceImage],
    grid_maps: Sequence[tuple[torch.Tensor, torch.Tensor]],
    crf: BatchCRF | None,
    params: CRFParams,
    mu: float,
    keep_maps: bool,
) -> list[FinishedMaps]:
    """``pipeline.finish`` for a batch of images, on the grid maps' device.

    ``grid_maps``: per image (grid CAMs, grid refined CAMs), (K, h', w'). ``crf`` None: no
    CRF (argmax, no 255); else it runs once for the whole batch. Full-size CAMs are made only
    with ``keep_maps``. Nothing here waits for the device (the CRF may, once per batch, to
    build its lattice).
    """
    probs, full_refined = [], []
    for image, (_, grid_refined) in zip(images, grid_maps):
        work_h, work_w = image.work_size
        refined = resize_bilinear(grid_refined, *image.size)
        work_refined = refined if image.work_size == image.size else resize_bilinear(grid_refined, work_h, work_w)
        if work_refined.shape[0]:
            background = 1.0 - work_refined.max(dim=0).values
        else:
            background = work_refined.new_ones(work_h, work_w)
        probs.append(torch.cat([background[None], work_refined]))
        full_refined.append(refined)
    if crf is not None:
        if any(image.work is None for image in images):
            raise ValueError("the CRF needs the images")
        scores = [q.float() for q in crf([image.work for image in images], probs, params)]  # type: ignore[misc]
    else:
        scores = probs
    out = []
    for image, (grid_cam, _), refined, score in zip(images, grid_maps, full_refined, scores):
        mask, confidence = label_map_torch(score, image.lut, mu if crf is not None else None)
        if image.work_size != image.size:
            mask = resize_nearest(mask, *image.size)
            if crf is not None:
                confidence = resize_bilinear(confidence[None], *image.size)[0]
        out.append(
            FinishedMaps(
                mask=mask,
                confidence=confidence if crf is not None else None,
                cam=resize_bilinear(grid_cam, *image.size) if keep_maps else None,
                refined=refined if keep_maps else None,
            )
        )
    return out


class HostCopy:
    """Device tensors copied to the host asynchronously (pinned memory on a GPU); ``wait`` gives numpy arrays.

    Start the copies, queue more work on the device, then ``wait``: the host blocks only
    for what was queued before the copies.
    """

    def __init__(self, tensors: Sequence[torch.Tensor | None]) -> None:
        self._event = None
        self._host: list[torch.Tensor | None] = []
        for t in tensors:
            if t is None:
                self._host.append(None)
            elif t.device.type == "cuda":
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                self._host.append(host)
            else:
                self._host.append(t.detach().to("cpu"))
        if any(t is not None and t.device.type == "cuda" for t in tensors):
            self._event = torch.cuda.Event()
            self._event.record()

    def wait(self) -> list[np.ndarray | None]:
        if self._event is not None:
            self._event.synchronize()
        return [None if t is None else t.numpy() for t in self._host]


def pydensecrf_on_tensors(images: Sequence[torch.Tensor], probs: Sequence[torch.Tensor], params: CRFParams) -> list[torch.Tensor]:
    """The CPU CRF behind the batch tensor interface (copies to the host and back): for tests and fallbacks."""
    from clipseg_cli.postprocess.crf import dense_crf

    return [
        torch.from_numpy(dense_crf(image.cpu().numpy(), prob.float().cpu().numpy(), params)).to(prob.device)
        for image, prob in zip(images, probs)
    ]
