"""The CLIP-ES predictor: one RGB image and its labels in, CAMs, refined CAMs and a mask out.

A thin API over the model (in the spirit of segment-anything's predictor); the CLI's
runner only adds files, resuming and reporting around it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import cv2
import numpy as np
import torch

from clipseg_cli.cam.caa import affinity_from_attention, channel_slots, refine_grid_cams
from clipseg_cli.cam.gradcam import AutogradSoftmaxGradCAM, FusedSoftmaxGradCAM, Targets, run_frozen_blocks
from clipseg_cli.cam.normalize import resize_maps
from clipseg_cli.cam.preprocess import limit_side, normalize_pixels, resize_to_patches
from clipseg_cli.clip.model import CLIP, LayerNorm, ResidualAttentionBlock, VisionTransformer
from clipseg_cli.clip.text import TextEncoder
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.postprocess.crf import CRFParams, dense_crf
from clipseg_cli.postprocess.labelmap import label_map

SynonymMode = Literal["sentence", "feature", "cam"]
SYNONYM_MODES = ("sentence", "feature", "cam")
GRADCAM_IMPLEMENTATIONS = {"fused": FusedSoftmaxGradCAM, "autograd": AutogradSoftmaxGradCAM}
DEFAULT_TEMPLATE = "a clean origami {}."
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    precision: Precision = "fp32"  # of the frozen blocks; Grad-CAM's last block and CAA stay float32


@dataclass
class LabelResult:
    """Outputs at the image's original size; ``labels`` are class indices in CAM channel order."""

    labels: list[int]
    cam: np.ndarray  # (K, H, W) float32
    refined: np.ndarray  # (K, H, W) float32
    mask: np.ndarray  # (H, W) uint8: 0 background, 1 + c, 255 below mu
    confidence: np.ndarray | None  # (H, W) float32, when the CRF ran
    seconds: dict[str, float]


@dataclass
class GridMaps:
    """A batch's maps on the patch grid, on the model's device; the channels of all images stacked."""

    cams: torch.Tensor  # (K, h', w') float32
    refined: torch.Tensor  # (K, h', w') float32
    counts: list[int]  # channels (labels) of each image, in order

    def per_image(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(cams, refined) of each image: views, no copy."""
        return list(zip(self.cams.split(self.counts), self.refined.split(self.counts)))


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; through pinned memory without waiting on a GPU."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def reduced_precision_blocks(visual: VisionTransformer, precision: str) -> list[ResidualAttentionBlock] | None:
    """A copy of the frozen blocks (all but the last) in ``precision``, LayerNorms kept float32; None for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    blocks = copy.deepcopy(visual.blocks[:-1])
    for module in blocks.modules():
        if not isinstance(module, LayerNorm):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(PRECISIONS[precision])
    return list(blocks)


class CLIPESPredictor:
    def __init__(self, model: CLIP, class_set: ClassSet, settings: CLIPESSettings) -> None:
        self.model = model
        self.class_set = class_set
        self.settings = settings
        self.text = TextEncoder(model, settings.templates)
        self.gradcam = GRADCAM_IMPLEMENTATIONS[settings.gradcam]()
        self.frozen_blocks = reduced_precision_blocks(model.visual, settings.precision)

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
        targets, fused_into = self.targets([labels])
        rows: list[list[int]] = [[] for _ in labels]
        into = range(len(targets)) if fused_into is None else fused_into.tolist()
        for label, row in zip(into, targets.index.tolist()):
            rows[label].append(row)
        return targets.texts, rows

    def targets(self, labels_per_image: Sequence[Sequence[int]]) -> tuple[Targets, torch.Tensor | None]:
        """The batch's Grad-CAM channels, and for synonyms=cam the label each channel is fused into.

        Texts: each image's softmax runs over [its labels' texts, in order] + [the background
        set], as if it were alone; texts shared between images are encoded once. With
        synonyms=cam each synonym's channel leaves the other synonyms of its label out of its
        softmax (``Targets.exclude``), so they do not suppress each other.
        """
        mode = self.settings.synonyms
        rows: dict[tuple, int] = {}
        specs: list[tuple[str, tuple[str, ...]]] = []  # ("name", (text,)) or ("group", synonyms)

        def row(key: tuple, spec: tuple[str, tuple[str, ...]]) -> int:
            if key not in rows:
                rows[key] = len(specs)
                specs.append(spec)
            return rows[key]

        member_rows, index, owner, fused_into = [], [], [], []
        label_number = 0  # over the whole batch
        for b, labels in enumerate(labels_per_image):
            seen: dict[tuple, int] = {}
            mine = []
            for c in labels:
                if mode == "feature":
                    texts = [("group", tuple(self.class_set.synonyms[c]))]
                else:
                    texts = [("name", (t,)) for t in self._class_groups([c])[0]]
                for j, spec in enumerate(texts):
                    key = ("fg", c, j)
                    seen[key] = seen.get(key, -1) + 1  # a repeated label keeps its own row, as alone
                    r = row((*key, seen[key]), spec)
                    mine.append(r)
                    index.append(r)
                    owner.append(b)
                    fused_into.append(label_number)
                label_number += 1
            mine += [row(("bg", i), ("name", (t,))) for i, t in enumerate(self.class_set.background)]
            member_rows.append(mine)
        features = self._features(specs, labels_per_image)
        member = torch.zeros(len(labels_per_image), len(specs), dtype=torch.bool)
        for b, mine in enumerate(member_rows):
            member[b, mine] = True
        device = self.device
        targets = Targets(
            texts=features,
            member=to_device(member, device),
            owner=to_device(torch.tensor(owner, dtype=torch.long), device),
            index=to_device(torch.tensor(index, dtype=torch.long), device),
        )
        fused = None
        if mode == "cam":  # each synonym's softmax without the other synonyms of its label
            exclude = torch.zeros(len(index), len(specs), dtype=torch.bool)
            for k, label in enumerate(fused_into):
                exclude[k, [r for r, other in zip(index, fused_into) if other == label and r != index[k]]] = True
            targets.exclude = to_device(exclude, device)
            fused = to_device(torch.tensor(fused_into, dtype=torch.long), device)
        return targets, fused

    def _features(self, specs: list[tuple[str, tuple[str, ...]]], labels_per_image: Sequence[Sequence[int]]) -> torch.Tensor:
        """Features of the text rows. Names are encoded image by image, labels then background,
        as one image alone asks for them: the text tower's rounding depends on what is encoded
        together, and the first encoding of a name is kept."""
        mode = self.settings.synonyms
        for labels in labels_per_image:
            if mode == "feature":
                self.text.encode_groups([self.class_set.synonyms[c] for c in labels])
            else:
                self.text.encode([t for g in self._class_groups(labels) for t in g])
            self.text.encode(list(self.class_set.background))
        if not specs:
            return self.text.encode([])
        names = [texts[0] for kind, texts in specs if kind == "name"]
        groups = [texts for kind, texts in specs if kind == "group"]
        by_name = dict(zip(names, self.text.encode(names))) if names else {}
        by_group = dict(zip(groups, self.text.encode_groups(groups))) if groups else {}
        return torch.stack([by_name[t[0]] if kind == "name" else by_group[t] for kind, t in specs])

    def grid_maps(self, images: torch.Tensor, labels_per_image: Sequence[Sequence[int]]) -> GridMaps:
        """CAMs and CAA-refined CAMs on the patch grid for a batch of CLIP inputs (B, 3, h, w) of one size."""
        visual = self.model.visual
        with torch.inference_mode(False):
            frozen = run_frozen_blocks(visual, images.to(self.device), blocks=self.frozen_blocks)
            targets, fused_into = self.targets(labels_per_image)
            cams, last_attention = self.gradcam(visual, frozen, targets, self.model.logit_scale)
        counts = [len(labels) for labels in labels_per_image]
        if fused_into is not None:  # synonyms=cam: a label's CAM is the max over its synonyms'
            fused = cams.new_zeros(sum(counts), *cams.shape[1:])
            cams = fused.scatter_reduce_(0, fused_into[:, None, None].expand_as(cams), cams, "amax", include_self=False)
        mean_attention = (frozen.attention_sum + last_attention) / (frozen.attention_count + 1)
        affinity = affinity_from_attention(mean_attention)
        owner, slot = channel_slots(counts)
        refined = refine_grid_cams(
            affinity, cams, self.settings.lam,
            to_device(torch.tensor(owner, dtype=torch.long), self.device),
            to_device(torch.tensor(slot, dtype=torch.long), self.device),
            max(counts, default=0),
        )  # fmt: skip
        return GridMaps(cams, refined, counts)

    def grid_cams(self, tensor: torch.Tensor, labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(K, h', w') CAMs and CAA-refined CAMs on the patch grid of one image, from a (1, 3, h, w) CLIP input."""
        maps = self.grid_maps(tensor, [labels])
        return maps.cams.cpu().numpy(), maps.refined.cpu().numpy()

    def predict(self, image: np.ndarray, labels: Sequence[int]) -> LabelResult:
        """CAM, CAA and (optionally) CRF for one RGB uint8 image of any size."""
        start = time.perf_counter()
        prepared = prepare(image, self.settings, self.model.visual.patch_size)
        grid_cam, grid_refined = self.grid_cams(prepared.clip_input(), labels)
        result = finish(prepared, grid_cam, grid_refined, labels, self.settings)
        result.seconds["cam"] += time.perf_counter() - start - result.seconds["total"]
        result.seconds["total"] = time.perf_counter() - start
        return result


@dataclass
class PreparedImage:
    """An image ready for the model: the original, the (maybe scaled-down) working copy, the input."""

    image: np.ndarray  # (H, W, 3) uint8, original size
    work: np.ndarray  # (h, w, 3) uint8, at most max_side
    pixels: np.ndarray  # (h16, w16, 3) uint8: ``work`` resized to multiples of the patch size

    def clip_input(self) -> torch.Tensor:
        """(1, 3, h16, w16) float32, CLIP-normalised (``to_clip_tensor`` of ``work``)."""
        return normalize_pixels(torch.from_numpy(self.pixels)[None])


def prepare(image: np.ndarray, settings: CLIPESSettings, patch: int = 16) -> PreparedImage:
    """CPU-only preprocessing (no model), so it can run in a worker process."""
    work = limit_side(image, settings.max_side)
    return PreparedImage(image, work, resize_to_patches(work, patch))


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
