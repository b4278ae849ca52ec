"""The CLIP-ES predictor: one RGB image and its labels in, CAMs, refined CAMs and a mask out.

A thin API over the model (in the spirit of segment-anything's predictor); the CLI's
runner only adds files, resuming and reporting around it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import cv2
import numpy as np
import torch

from clipseg_cli.cam.caa import affinity_from_attention, refine_cams
from clipseg_cli.cam.gradcam import AutogradSoftmaxGradCAM, FusedSoftmaxGradCAM, run_frozen_blocks
from clipseg_cli.cam.normalize import resize_maps
from clipseg_cli.cam.preprocess import limit_side, to_clip_tensor
from clipseg_cli.clip.model import CLIP
from clipseg_cli.clip.text import TextEncoder
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.postprocess.crf import CRFParams, dense_crf
from clipseg_cli.postprocess.labelmap import label_map

SynonymMode = Literal["sentence", "feature", "cam"]
SYNONYM_MODES = ("sentence", "feature", "cam")
GRADCAM_IMPLEMENTATIONS = {"fused": FusedSoftmaxGradCAM, "autograd": AutogradSoftmaxGradCAM}
DEFAULT_TEMPLATE = "a clean origami {}."


@dataclass(frozen=True)
class CLIPESSettings:
    templates: tuple[str, ...] = (DEFAULT_TEMPLATE,)
    synonyms: SynonymMode = "sentence"
    lam: float = 0.4
    mu: float = 0.95
    crf: bool = True
    max_side: int | None = 1024
    gradcam: Literal["fused", "autograd"] = "fused"  # same numbers; autograd is the slow reference
    crf_params: CRFParams = field(default_factory=CRFParams)
    crf_backend: str = "pydensecrf"  # or "torch" (postprocess.crf.resolve_crf_backend)
    crf_device: str = "cpu"  # where the torch backend runs


@dataclass
class LabelResult:
    """Outputs at the image's original size; ``labels`` are class indices in CAM channel order."""

    labels: list[int]
    cam: np.ndarray  # (K, H, W) float32
    refined: np.ndarray  # (K, H, W) float32
    mask: np.ndarray  # (H, W) uint8: 0 background, 1 + c, 255 below mu
    confidence: np.ndarray | None  # (H, W) float32, when the CRF ran
    seconds: dict[str, float]


class CLIPESPredictor:
    def __init__(self, model: CLIP, class_set: ClassSet, settings: CLIPESSettings) -> None:
        self.model = model
        self.class_set = class_set
        self.settings = settings
        self.text = TextEncoder(model, settings.templates)
        self.gradcam = GRADCAM_IMPLEMENTATIONS[settings.gradcam]()

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def _class_groups(self, labels: Sequence[int]) -> list[list[str]]:
        """Per label, the texts whose CAMs make the label's CAM (one unless synonyms=cam)."""
        if self.settings.synonyms == "cam":
            return [list(self.class_set.synonyms[c]) for c in labels]
        return [[self.class_set.prompts[c]] for c in labels]

    def text_set(self, labels: Sequence[int]) -> tuple[torch.Tensor, list[list[int]]]:
        """Features of [the image's labels, in order] + [the background set], and per label its rows."""
        mode = self.settings.synonyms
        if mode == "feature":
            fg = self.text.encode_groups([self.class_set.synonyms[c] for c in labels])
            rows = [[i] for i in range(len(labels))]
        else:
            groups = self._class_groups(labels)
            fg = self.text.encode([t for g in groups for t in g])
            rows, start = [], 0
            for g in groups:
                rows.append(list(range(start, start + len(g))))
                start += len(g)
        bg = self.text.encode(list(self.class_set.background))
        return torch.cat([fg, bg]), rows

    def grid_cams(self, tensor: torch.Tensor, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(K, h', w') CAMs and CAA-refined CAMs on the patch grid, from a ``to_clip_tensor`` input."""
        with torch.inference_mode(False):
            frozen = run_frozen_blocks(self.model.visual, tensor.to(self.device))
            features, rows = self.text_set(labels)
            targets = [r for group in rows for r in group]
            cams, last_attention = self.gradcam(self.model.visual, frozen, features, self.model.logit_scale, targets)
        if self.settings.synonyms == "cam":
            offsets = np.cumsum([0] + [len(g) for g in rows])
            cams = np.stack([cams[a:b].max(axis=0) for a, b in zip(offsets[:-1], offsets[1:])])
        mean_attention = (frozen.attention_sum + last_attention) / (frozen.attention_count + 1)
        affinity = affinity_from_attention(mean_attention)
        refined = refine_cams(affinity, cams, self.settings.lam)
        return cams, refined

    def predict(self, image: np.ndarray, labels: Sequence[int]) -> LabelResult:
        """CAM, CAA and (optionally) CRF for one RGB uint8 image of any size."""
        start = time.perf_counter()
        prepared = prepare(image, self.settings, self.model.visual.patch_size)
        grid_cam, grid_refined = self.grid_cams(torch.from_numpy(prepared.tensor), labels)
        result = finish(prepared, grid_cam, grid_refined, labels, self.settings)
        result.seconds["cam"] += time.perf_counter() - start - result.seconds["total"]
        result.seconds["total"] = time.perf_counter() - start
        return result


@dataclass
class PreparedImage:
    """An image ready for the model: the original, the (maybe scaled-down) working copy, the input."""

    image: np.ndarray  # (H, W, 3) uint8, original size
    work: np.ndarray  # (h, w, 3) uint8, at most max_side
    tensor: np.ndarray  # (1, 3, h16, w16) float32, CLIP-normalised


def prepare(image: np.ndarray, settings: CLIPESSettings, patch: int = 16) -> PreparedImage:
    """CPU-only preprocessing (no model), so it can run in a worker process."""
    work = limit_side(image, settings.max_side)
    return PreparedImage(image, work, to_clip_tensor(work, patch).numpy())


def finish(
    prepared: PreparedImage,
    grid_cam: np.ndarray,
    grid_refined: np.ndarray,
    labels: Sequence[int],
    settings: CLIPESSettings,
) -> LabelResult:
    """Grid maps -> full-size CAMs, CRF and the mask (no model), so it can run in a worker process.

    ``seconds`` has "crf" (resizing, CRF, labelling) and "total" for this step; "cam" is 0
    and is filled in by whoever ran the model.
    """
    start = time.perf_counter()
    image, work = prepared.image, prepared.work
    height, width = image.shape[:2]
    cam = resize_maps(grid_cam, height, width)
    refined = resize_maps(grid_refined, height, width)
    scaled = work.shape != image.shape
    work_refined = resize_maps(grid_refined, *work.shape[:2]) if scaled else refined
    mask, confidence = mask_from_refined(work, work_refined, labels, settings)
    if scaled:
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
        if confidence is not None:
            confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_LINEAR)
    elapsed = time.perf_counter() - start
    return LabelResult(list(labels), cam, refined, mask, confidence, {"cam": 0.0, "crf": elapsed, "total": elapsed})


def mask_from_refined(
    image: np.ndarray, refined: np.ndarray, labels: Sequence[int], settings: CLIPESSettings
) -> tuple[np.ndarray, np.ndarray | None]:
    """Background = 1 - max refined; CRF + confidence threshold, or a plain argmax without CRF."""
    keys = [0, *(1 + c for c in labels)]
    background = 1.0 - (refined.max(axis=0) if len(labels) else np.zeros(image.shape[:2], np.float32))
    probs = np.concatenate([background[None], refined]).astype(np.float32)
    if not settings.crf:
        mask, _ = label_map(probs, keys)
        return mask, None
    q = dense_crf(image, probs, settings.crf_params, settings.crf_backend, settings.crf_device)
    return label_map(q, keys, settings.mu)
