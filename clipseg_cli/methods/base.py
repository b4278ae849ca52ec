"""The contract of a learned method: what it declares, what it gives the training engine, how its
checkpoints become a predictor.

A method subclasses :class:`LearnedMethod` and sets

- ``name`` (``clims``), ``family`` (``segmenter`` | ``refiner`` | ``cam``: which command trains it)
  and ``kind`` (its checkpoints' ``kind``, e.g. ``cam.clims``), ``summary`` (its command's help);
- ``Config``: a :class:`clipseg_cli.training.config.RunConfig` subclass whose fields, declared with
  :func:`clipseg_cli.training.config.setting`, carry defaults, help, flags and limits;
- the training hooks of :class:`clipseg_cli.training.engine.TrainingHooks` (``setup``, ``batches``,
  ``schedule``, ``loss``, ``model_config`` and optional ones);
- ``load_predictor(checkpoint, device, options)``: a :class:`clipseg_cli.inference.Predictor`.

What a run needs from outside its config (labels, how to load CLIP, a ready backbone) comes in a
:class:`MethodInputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clipseg_cli.data.images import list_images
from clipseg_cli.data.labels import ImageLabels, labels_for_images, saved_image_labels
from clipseg_cli.errors import ConfigError
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import resolve_workers, stream_loader
from clipseg_cli.training.engine import TrainingHooks
from clipseg_cli.training.reporting import QuietReporter

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP
    from clipseg_cli.clip.pretrained import ResolvedWeights
    from clipseg_cli.data.labels import LabelIndex
    from clipseg_cli.inference import InferenceOptions, Predictor

FAMILY_COMMANDS = {"segmenter": "retrain", "refiner": "refine train", "cam": "train-cam"}
WEIGHTS_HELP = "CLIP checkpoint (default: $WSSS_LABEL_WEIGHTS, else the cached ViT-B-16.pt, downloaded if absent)."

T = TypeVar("T")
ClipLoader = Callable[["Path | None", torch.device], "tuple[CLIP, ResolvedWeights]"]


def load_clip_resolved(weights: Path | None, device: torch.device) -> tuple[CLIP, ResolvedWeights]:
    """Resolve CLIP weights as the main command does (no progress display) and load them."""
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.clip.pretrained import resolve_weights

    resolved = resolve_weights(weights)
    return load_clip(resolved.path, device), resolved


def weights_setting(help: str = WEIGHTS_HELP) -> Any:
    """The ``--weights`` field of a method that uses a frozen CLIP (not defining: on --resume the
    run's recorded file is the default, and its SHA-256 must match)."""
    return setting(None, help, defining=False, metavar="FILE")


@dataclass
class MethodInputs:
    """What a run takes besides its config.

    ``labels``: image-level labels (None on ``--resume``: the run's saved labels); ``load_clip``:
    ``(weights or None, device) -> (CLIP, ResolvedWeights)`` (the CLI passes one that shows a
    download bar); ``backbone``: a ready network for methods that take one (library use, tests)."""

    labels: LabelIndex | None = None
    load_clip: ClipLoader = load_clip_resolved
    backbone: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def clip_weights_record(resolved: ResolvedWeights) -> dict[str, str]:
    return {"path": str(Path(resolved.path).resolve()), "sha256": resolved.sha256}


def check_clip_weights(model_config: Mapping[str, Any], resolved: ResolvedWeights, what: str) -> None:
    """The learned parts only fit the CLIP they were trained on: compare SHA-256."""
    recorded = (model_config.get("clip_weights") or {}).get("sha256")
    if recorded and recorded != resolved.sha256:
        raise ConfigError(
            f"{what} was trained on CLIP weights with SHA-256 {recorded[:12]}..., but {resolved.path} has "
            f"{resolved.sha256[:12]}...; pass the same --weights as for training"
        )


def recorded_weights(model_config: Mapping[str, Any]) -> Path | None:
    """The CLIP file a checkpoint was trained with, if it is still there."""
    path = (model_config.get("clip_weights") or {}).get("path")
    return Path(path) if path and Path(path).is_file() else None


def checkpoint_clip(ckpt: Mapping[str, Any], device: torch.device, weights: Path | None = None,
                    what: str = "the checkpoint", loader: ClipLoader = load_clip_resolved) -> tuple[CLIP, ResolvedWeights]:  # fmt: skip
    """The CLIP a checkpoint was trained with: ``weights``, else its recorded file, else as for
    labelling; ConfigError when its SHA-256 is not the recorded one."""
    clip, resolved = loader(weights or recorded_weights(ckpt["model_config"]), device)
    check_clip_weights(ckpt["model_config"], resolved, what)
    return clip, resolved


def labelled_paths(images: Path | None, image_labels: ImageLabels) -> tuple[list[str], list[Path]]:
    """The keys and paths of the labelled images under ``images`` (in the folder's order)."""
    found = list_images(Path(images)) if images is not None else {}
    keys = [k for k in found if k in image_labels]
    if not keys:
        raise ConfigError(f"no image in {images} has labels")
    return keys, [found[k] for k in keys]


def model_mismatch(exc: BaseException) -> ConfigError:
    """The one-line error of a checkpoint whose weights do not fit its model_config."""
    text = str(exc).strip().splitlines()
    detail = text[0][:160] if text else type(exc).__name__
    return ConfigError(f"checkpoint does not match its model_config ({type(exc).__name__}: {detail})")


class LearnedMethod(TrainingHooks):
    """A learned method: its declaration, its training hooks and its predictor loader."""

    name: ClassVar[str]
    family: ClassVar[str]
    kind: ClassVar[str]  # type: ignore[misc]
    summary: ClassVar[str] = ""
    Config: ClassVar[type[RunConfig]] = RunConfig
    # Method-specific options of a short run on tiny ("tiny") and paper-sized ("base": the defaults are
    # the paper's, so only what differs) random networks, as typed on the command line: what
    # benchmarks/train_gpu_smoke.py and the engine's tests run.
    smoke_args: ClassVar[dict[str, str]] = {}
    # The options of `wsss-label predict` beyond scales / flip / CRF this method's predictor reads
    # (fields of clipseg_cli.inference.InferenceOptions); predict's help names the methods.
    predict_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: RunConfig, device: torch.device | str = "cpu", inputs: MethodInputs | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.inputs = inputs or MethodInputs()
        self.reporter = QuietReporter()

    @property  # type: ignore[override]
    def command(self) -> str:
        base = FAMILY_COMMANDS[self.family]
        return f"{base} {self.name}" if self.family == "cam" else base

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> Predictor:
        raise NotImplementedError

    # -- helpers the methods share --
    def stream(self, dataset: Dataset, start: int) -> DataLoader:
        """The batches of ``dataset`` for iterations ``start`` .. ``iters - 1``: the run's sample stream
        (:func:`clipseg_cli.training.data.stream_loader`) at its batch size, seed and ``--workers``."""
        cfg = self.cfg
        return stream_loader(dataset, cfg.batch, cfg.seed, start, self.iters, resolve_workers(cfg.workers, self.device), self.device)

    def training_labels(self, ckpt: Mapping[str, Any] | None) -> ImageLabels:
        """Mask values of the labelled training images: from ``inputs.labels``, else (``--resume``)
        the run's saved labels; ConfigError when there are none."""
        if self.inputs.labels is None:
            if ckpt is None:
                raise ConfigError("give exactly one of --labels FILE or --annotations DIR")
            labels = saved_image_labels(ckpt.get("image_labels"))
        else:
            if self.cfg.images is None:
                raise ConfigError("IMAGES: no training images given")
            labels = labels_for_images(self.inputs.labels, Path(self.cfg.images), self.cfg.class_names)
        if not labels:
            raise ConfigError(f"no image in {self.cfg.images} has labels")
        return labels

    def apply_review(self, items: Sequence[T], key: Callable[[T], str], masks: Path | None = None) -> list[T]:
        """``items`` without the images a review marks rejected (``key``: an item's image path
        without extension). The review is ``--review``, else ``MASKS/../review.json`` when it
        exists (``masks``: the run's MASKS or SEEDS; None for methods trained on labels only).
        What it decided goes to run.json's ``review``; ConfigError when it leaves nothing."""
        from clipseg_cli.review import find_review, load_review
        from clipseg_cli.segmentation.dataset import resolve_masks_dir

        given = getattr(self.cfg, "review", None)
        path = find_review(resolve_masks_dir(masks) if masks is not None else None, given)
        if path is None:
            self.review = None
            return list(items)
        rejected = load_review(path).stems("rejected")
        kept = [item for item in items if key(item) not in rejected]
        left_out = sorted(key(item) for item in items if key(item) in rejected)
        self.review = {
            "file": str(Path(path).resolve()),
            "found": "--review" if given is not None else "beside the masks",
            "rejected": len(rejected),
            "left_out": len(left_out),
            "left_out_images": left_out,
        }
        where = "" if given is not None else " (MASKS/../review.json)"
        self.reporter.message(f"review: {path}{where}: {len(left_out)} image(s) marked rejected are left out of training")
        if not kept:
            raise ConfigError(f"{path} rejects every training image: nothing left to train on")
        return kept

    def frozen_clip(self, ckpt: Mapping[str, Any] | None) -> tuple[CLIP, ResolvedWeights]:
        """The frozen CLIP of the run: ``--weights``, else (``--resume``) the run's recorded file,
        else as for labelling; on ``--resume`` its SHA-256 must be the run's."""
        weights = getattr(self.cfg, "weights", None)
        if ckpt is None:
            return self.inputs.load_clip(weights, self.device)
        return checkpoint_clip(ckpt, self.device, weights, f"the run in {self.cfg.out}", self.inputs.load_clip)


class CamMethod(LearnedMethod):
    """A learned CAM generator (``wsss-label train-cam NAME``), trained from image-level labels. Its
    checkpoints keep the training images' labels, so ``predict`` needs no ``--labels`` for them."""

    family = "cam"
    samples_key = "images"
    samples_noun = "labelled images"

    def load_labelled_images(self, ckpt: Mapping[str, Any] | None) -> None:
        """``image_labels``, and ``keys`` / ``paths`` of the labelled images under IMAGES."""
        self.image_labels = self.training_labels(ckpt)
        keys, paths = labelled_paths(self.cfg.images, self.image_labels)
        kept = self.apply_review(list(zip(keys, paths)), lambda kp: kp[0])
        self.keys, self.paths = [k for k, _ in kept], [p for _, p in kept]

    @property
    def samples(self) -> int:
        return len(self.keys)

    @property
    def key_labels(self) -> list[list[int]]:
        """The labels of ``keys``, in their order (what a method's dataset is built from)."""
        return [self.image_labels[k] for k in self.keys]

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"image_labels": {k: self.image_labels[k] for k in self.keys}, "images": len(self.keys)}
