"""Masks from any learned checkpoint: the predictor contract, multi-scale + flip fusion (softmax mean, or DeepLab's logit max),
optional dense CRF, WeakCLIP's eq. 14, and the folder loop of ``wsss-label predict``.

:func:`load_predictor` reads a checkpoint and hands it to the method registered for its ``kind``
(:mod:`clipseg_cli.methods`); every method's ``load_predictor`` returns a :class:`Predictor`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipseg_cli.data.images import list_images, read_rgb
from clipseg_cli.data.labels import LabelIndex
from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.io.atomic import write_json
from clipseg_cli.io.masks import IGNORE_LABEL, save_mask
from clipseg_cli.run_settings import Decisive, read_record, rerun_conflict
from clipseg_cli.segmentation.deeplab import Normalization, upsample_logits
from clipseg_cli.training.checkpoint import read_checkpoint

PREDICT_FILE = "predict.json"
# The settings of predict.json that decide the masks of `predict` and `refine predict`: a rerun
# into the same --out must have the same (see run_settings). Absent from an older predict.json:
# crf_backend, precision, bg_threshold and caa had their defaults; the rest is not compared.
PREDICT_DECISIVE: tuple[Decisive, ...] = (
    Decisive("checkpoint_sha256"),
    Decisive("scales"),
    Decisive("flip"),
    Decisive("crf"),
    Decisive("crf_backend", "pydensecrf"),
    Decisive("precision", "fp32"),
    Decisive("bg_threshold", None),
    Decisive("caa", False),
    Decisive("labels_sha256"),
    Decisive("weights.sha256"),
)


def check_predict_rerun(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """ConfigError when ``out`` holds masks of an earlier predict run made with other decisive
    settings (:data:`PREDICT_DECISIVE`); call it before the model is loaded."""
    masks = Path(out) / "masks"
    if overwrite or not masks.is_dir() or next(masks.rglob("*.png"), None) is None:
        return
    message = rerun_conflict(Path(out), read_record(Path(out) / PREDICT_FILE), settings, PREDICT_DECISIVE)
    if message:
        raise ConfigError(message)


@dataclass(frozen=True)
class InferenceOptions:
    scales: tuple[float, ...] = (0.5, 0.75, 1.0)
    flip: bool = False
    bg_threshold: float | None = None  # CAM generators: background where no class map reaches it
    caa: bool = False  # CAM generators that keep a CLIP: refine maps with CLIP-ES's CAA
    caa_lam: float | None = None


class Predictor(Protocol):
    """What ``predict`` needs from any checkpoint kind."""

    class_names: list[str]

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (1 + K, H, W) float32 class probabilities (channel 0 background).

        ``labels``: the image's mask values (1 + c) when known; CAM generators need them (their
        maps are per label), segmentation networks ignore them.
        """

    # Optional: ``image_labels(key) -> Sequence[int] | None``, the mask values (1 + c) an image is
    # labelled with. A predictor that has it makes pseudo masks: every other class becomes 255
    # (:func:`keep_image_labels`), and images it returns None for are skipped as unlabelled.


PredictorLoader = Callable[[dict[str, Any], torch.device, InferenceOptions], Predictor]


class SoftmaxPredictor:
    """A network giving class logits (background first) at any resolution, as a :class:`Predictor`:
    the views of ``options.scales`` (and flips) fused by :func:`multiscale_probs` as ``fuse`` says
    (``mean`` of the softmax; ``max`` of the logits, DeepLab's MSC)."""

    fuse = "mean"

    def __init__(self, model: torch.nn.Module, norm: Normalization, class_names: list[str], device: torch.device,
                 options: InferenceOptions) -> None:  # fmt: skip
        self.model = model.to(device).eval()
        self.norm = norm
        self.class_names = class_names
        self.device = device
        self.options = options

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        return multiscale_probs(self.model, self.norm, image, self.device, self.options.scales, self.options.flip, self.fuse)


@torch.no_grad()
def multiscale_probs(
    model: torch.nn.Module,
    norm: Normalization,
    image: np.ndarray,
    device: torch.device,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fuse: str = "mean",
) -> np.ndarray:
    """Class probabilities at the image's size from the views at ``scales`` (and their horizontal
    flips). ``mean``: each view's softmax at the image's size, averaged. ``max``: as DeepLab's
    reference MSC (kazuto1011/deeplab-pytorch), each view's logits resized to the logit grid of
    scale 1 (the image's size when 1 is not among ``scales``), their pixel-wise max, then resized to
    the image and the softmax."""
    if fuse not in ("mean", "max"):
        raise ValueError(f"fuse must be 'mean' or 'max', got {fuse!r}")
    height, width = image.shape[:2]
    x = torch.from_numpy(norm.apply(image)).unsqueeze(0).to(device)
    order = sorted(scales, key=lambda s: s != 1.0) if fuse == "max" else list(scales)  # max: scale 1 first, its grid
    total: torch.Tensor | None = None
    grid: tuple[int, int] = (height, width)
    count = 0
    for i, s in enumerate(order):
        xs = x
        if s != 1.0:
            size = (max(1, int(round(height * s))), max(1, int(round(width * s))))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = model(batch).float()
        if flip:
            logits = torch.stack([logits[0], logits[1].flip(-1)])
        if fuse == "max":
            if i == 0 and s == 1.0:
                grid = tuple(logits.shape[-2:])  # type: ignore[assignment]
            view = upsample_logits(logits, grid).amax(dim=0)
            total = view if total is None else torch.maximum(total, view)
        else:
            view = upsample_logits(logits, (height, width)).softmax(dim=1).sum(dim=0)
            total = view if total is None else total + view
            count += logits.shape[0]
    assert total is not None
    if fuse == "max":
        return upsample_logits(total[None], (height, width)).softmax(dim=1)[0].cpu().numpy()
    return (total / count).cpu().numpy()


def load_predictor(path: Path, device: torch.device, options: InferenceOptions) -> Predictor:
    """Read ``path`` and hand it to the method registered for its ``kind``."""
    from clipseg_cli.methods import method_for_kind

    ckpt = read_checkpoint(path)
    method = method_for_kind(str(ckpt["kind"]), f"--checkpoint {path}")
    try:
        return method.load_predictor(ckpt, device, options)
    except ConfigError as exc:
        raise ConfigError(f"--checkpoint {path}: {exc}") from None


def labels_by_key(index: LabelIndex, class_names: Sequence[str]) -> Callable[[str], list[int] | None]:
    """``key -> mask values (1 + c)`` of an image from a labels file; ConfigError on unknown names."""
    lookup = {name.strip().lower(): 1 + i for i, name in enumerate(class_names)}
    for key, names in index.labels.items():
        unknown = [n for n in names if n.strip().lower() not in lookup]
        if unknown:
            raise ConfigError(f"--labels: unknown class {unknown[0]!r} for {key}; the checkpoint's classes: {', '.join(class_names)}")

    def image_labels(key: str) -> list[int] | None:
        names = index.lookup(key)
        return None if names is None else [lookup[n.strip().lower()] for n in names]

    return image_labels


def probs_to_mask(probs: np.ndarray, image: np.ndarray | None = None, crf: bool = False) -> np.ndarray:
    """Argmax of (optionally CRF-refined) probabilities -> uint8 label map."""
    if crf:
        from clipseg_cli.postprocess.crf import dense_crf

        assert image is not None
        probs = dense_crf(image, probs)
    return probs.argmax(axis=0).astype(np.uint8)


def keep_image_labels(mask: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """WeakCLIP's eq. 14: pixels of a class that is neither background (0) nor one of the image's
    ``labels`` (mask values 1 + c) become 255; a new array."""
    keep = np.zeros(256, dtype=bool)
    keep[0] = True
    keep[np.asarray(list(labels), dtype=np.int64)] = True
    return np.where(keep[mask], mask, np.uint8(IGNORE_LABEL)).astype(np.uint8)


@dataclass
class PredictSummary:
    written: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    unlabelled: list[str] = field(default_factory=list)


def predict_folder(
    images: Path,
    out: Path,
    predictor: Predictor,
    *,
    crf: bool,
    overwrite: bool,
    settings: dict[str, Any],
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str], None] | None = None,
    labels: LabelIndex | None = None,
    on_failure: Callable[[str, str], None] | None = None,
) -> PredictSummary:
    """Write ``out/masks/<rel>.png`` for every image (skipping existing ones unless ``overwrite``).

    An unreadable image is recorded in ``failed`` (and ``on_failure(key, error)`` hears of it
    at once) and the rest go on; ``out/predict.json`` summarises the run: it is written first
    with this run's settings, and with ``overwrite`` the existing masks of the images go first,
    so an interrupted overwrite never leaves masks of two runs behind one record. A predictor
    with ``image_labels`` gets eq. 14 applied to its masks, and its unlabelled images are
    skipped and listed under ``unlabelled``.
    """
    found = list_images(images)
    if not found:
        raise ConfigError(f"IMAGES {images}: no images found")
    summary = PredictSummary()
    image_labels: Callable[[str], Sequence[int] | None] | None = getattr(predictor, "image_labels", None)
    if labels is not None:  # --labels wins over labels stored in a checkpoint
        image_labels = labels_by_key(labels, predictor.class_names)
    started = time.time()

    def report(state: str) -> dict[str, Any]:
        record = {
            **settings,
            "state": state,
            "images": len(found),
            "written": summary.written,
            "skipped_existing": summary.skipped,
            "failed": summary.failed,
            "seconds": round(summary.seconds, 3),
        }
        if image_labels is not None:
            record["unlabelled"] = summary.unlabelled
        return record

    write_json(out / PREDICT_FILE, report("running"))
    if overwrite:
        for key in found:
            (out / "masks" / f"{key}.png").unlink(missing_ok=True)
    if on_start:
        on_start(len(found))
    finished = False
    try:
        for key, path in found.items():
            dest = out / "masks" / f"{key}.png"
            labels = image_labels(key) if image_labels is not None else None
            if dest.exists() and not overwrite:
                summary.skipped += 1
            elif image_labels is not None and labels is None:
                summary.unlabelled.append(key)
            else:
                try:
                    image = read_rgb(path)
                    mask = probs_to_mask(predictor.probabilities(image, labels), image, crf)
                    if labels is not None:
                        mask = keep_image_labels(mask, labels)
                    save_mask(dest, mask)
                    summary.written += 1
                except ImageError as exc:
                    summary.failed.append({"image": key, "error": str(exc)})
                    if on_failure:
                        on_failure(key, str(exc))
            if on_image:
                on_image(key)
        finished = True
    finally:
        summary.seconds = time.time() - started
        write_json(out / PREDICT_FILE, report("finished" if finished else "interrupted"))
    return summary
