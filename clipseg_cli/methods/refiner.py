"""The refiner family (``wsss-label refine train --method NAME``): networks on a frozen CLIP trained
on the seed masks of the main command, predicting better ones.

A refiner brings a :class:`RefinerModel` (its network: frozen parts under ``frozen_prefixes``,
never trained or saved, a ``forward`` from normalised images to class logits with background
first, a ``training_loss``) and a small :class:`RefinerMethod` subclass registering it with its
config. This module gives every refiner

- :class:`RefineDataset`: image / seed-mask crops (retrain's augmentation) with the uint8 crop and
  the image's label vector;
- the training hooks: AdamW on the learnable parameters, linear warm-up then cosine decay to 1% of
  ``--lr``; the engine (:mod:`clipseg_cli.training`) does checkpoints, exact ``--resume`` and the run
  files. Checkpoints have ``kind`` ``refiner.<name>``; ``model`` holds only the learnable parts
  (the frozen CLIP is identified by ``model_config.clip_weights``), ``image_labels`` the training
  images' labels;
- :class:`RefinerPredictor`: multi-scale + flip softmax, and WeakCLIP's eq. 14 through the
  predictor's ``image_labels`` (pixels of classes the image is not labelled with become 255).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping, Sequence

import torch
from torch import nn

from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
from clipseg_cli.data.labels import ImageLabels, saved_image_labels
from clipseg_cli.errors import ConfigError
from clipseg_cli.inference import InferenceOptions, SoftmaxPredictor
from clipseg_cli.methods.base import (
    LearnedMethod,
    checkpoint_clip,
    clip_weights_record,
    model_mismatch,
    weights_setting,
)
from clipseg_cli.segmentation.dataset import Pair, PseudoMaskDataset, check_pair_sizes, find_pairs
from clipseg_cli.segmentation.deeplab import Normalization
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import seed_everything
from clipseg_cli.training.schedules import set_lr, warmup_cosine_lr

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP

# CLIP's pixel statistics in 0..255 units, RGB.
CLIP_NORM = Normalization(tuple(255.0 * m for m in CLIP_MEAN), tuple(255.0 * s for s in CLIP_STD), bgr=False)  # type: ignore[arg-type]
MIN_LR_FRACTION = 0.01  # cosine decay ends at 1% of --lr (the reference: 1e-4 -> 1e-6)
WARMUP_START = 1e-6  # linear warm-up starts at this fraction of the scheduled lr (mmseg's warmup_ratio)
DEFAULT_WARMUP = 0.075  # of --iters: WeakCLIP's 1500 warm-up iterations of 20000


# -- the network contract ------------------------------------------------------------------------
class RefinerModel(nn.Module):
    """A learned refiner's network: frozen parts (under ``frozen_prefixes``, never saved nor
    trained) and learnable parts, a ``forward`` from normalised images to class logits (channel 0
    background) at any resolution, and a ``training_loss`` on a batch of :class:`RefineDataset`.

    Subclasses set ``method`` (its registered name) and implement :meth:`create`,
    :meth:`from_config`, :meth:`model_config`, ``forward`` and :meth:`training_loss`.
    """

    method: ClassVar[str]
    frozen_prefixes: ClassVar[tuple[str, ...]] = ("clip.",)
    normalization: ClassVar[Normalization] = CLIP_NORM
    crop_multiple: ClassVar[int] = 16  # training crops must be multiples of this

    @property
    def kind(self) -> str:
        return f"refiner.{self.method}"

    @classmethod
    def create(cls, clip: CLIP, class_names: Sequence[str], class_prompts: Sequence[str], options: Mapping[str, Any]) -> RefinerModel:
        """A freshly initialised refiner on a frozen CLIP (the caller seeds the RNGs first);
        ``class_prompts`` are the class set's prompt texts (synonyms fused, as for labelling);
        ``options`` the method's own settings."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, clip: CLIP, model_config: Mapping[str, Any]) -> RefinerModel:
        """The architecture described by a checkpoint's ``model_config`` (weights not loaded)."""
        raise NotImplementedError

    def model_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def training_loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise and its named parts (logged in metrics.jsonl)."""
        raise NotImplementedError

    # -- frozen / learnable split --
    def _is_frozen(self, name: str) -> bool:
        return name.startswith(self.frozen_prefixes)

    def learnable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not self._is_frozen(n) and p.requires_grad]

    def learnable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not self._is_frozen(k)}

    def load_learnable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        try:
            missing, unexpected = self.load_state_dict(dict(state), strict=False)
        except RuntimeError as exc:
            raise ConfigError(f"checkpoint weights do not fit the model ({str(exc).splitlines()[0][:160]})") from None
        missing = [k for k in missing if not self._is_frozen(k)]
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {list(unexpected)[:3]}"
            raise ConfigError(f"checkpoint weights do not fit the model: {detail}")

    def train(self, mode: bool = True) -> RefinerModel:
        super().train(mode)
        for name, module in self.named_children():
            if self._is_frozen(name + "."):
                module.eval()
        return self


# -- data ----------------------------------------------------------------------------------------
class RefineDataset(PseudoMaskDataset):
    """Retrain's augmented crops of image + seed mask, plus ``rgb`` (the uint8 crop) and ``labels``:
    a bool vector over (background, classes...) with background and the image's classes set."""

    def __init__(self, pairs: Sequence[Pair], labels: Sequence[Sequence[int]], num_classes: int, norm: Normalization,
                 scales: Sequence[float], crop: int, seed: int) -> None:  # fmt: skip
        super().__init__(pairs, num_classes, norm, scales, crop, seed, keep_rgb=True)
        self.label_vectors = []
        for values in labels:
            vec = torch.zeros(num_classes, dtype=torch.bool)
            vec[0] = True
            vec[list(values)] = True
            self.label_vectors.append(vec)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, object]:
        out = super().__getitem__(item)
        out["labels"] = self.label_vectors[item[0]]
        return out


# -- configuration -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RefinerConfig(RunConfig):
    """What every refiner is trained with; a refiner's config adds its own settings."""

    seeds: Path | None = setting(None, "Seed masks: SEEDS/<rel>.png, or the OUT of `wsss-label label` (its masks/).",
                                 argument=True, metavar="SEEDS", defining=False)  # fmt: skip
    method: str = setting("weakclip", cli=False)
    weights: Path | None = weights_setting()
    iters: int = setting(20000, "Training iterations.", minimum=1)
    batch: int = setting(8, "Images per training iteration.", flags=("--batch-size",), minimum=1)
    crop: int = setting(512, "Square training crop in pixels (a multiple of 32).", minimum=32)
    scales: tuple[float, ...] = setting((0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5),
                                        "Random rescaling factors, one drawn per image.",
                                        cli_default="0.75,1,1.25,1.5,1.75,2,2.5", metavar="S,S,...")  # fmt: skip
    lr: float = setting(1e-4, "AdamW learning rate (cosine decay to 1% of it).", positive=True)
    weight_decay: float = setting(3e-5, "AdamW weight decay.", minimum=0)
    # the fraction of --iters with linear warm-up; the command line gives it as --warmup-iters N
    warmup: float = setting(DEFAULT_WARMUP, "Fraction of --iters with linear warm-up.", cli=False)
    skip_missing: bool = setting(False, "Train on the labelled images that have a seed mask instead of stopping.",
                                 defining=False)  # fmt: skip

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"--warmup-iters must be in [0, --iters) (--warmup: a fraction in [0, 1)), got {self.warmup:g} of --iters")

    @classmethod
    def own_fields(cls) -> list[str]:
        """The settings of this refiner beyond those every refiner has."""
        common = {f.name for f in dataclasses.fields(RefinerConfig)}
        return [f.name for f in dataclasses.fields(cls) if f.name not in common]


# -- the method ----------------------------------------------------------------------------------
class RefinerMethod(LearnedMethod):
    """Training hooks and predictor loader shared by every refiner; a refiner sets ``name``,
    ``kind``, ``summary``, ``Config`` and ``Model``."""

    family = "refiner"
    Model: ClassVar[type[RefinerModel]]
    Config: ClassVar[type[RunConfig]] = RefinerConfig
    samples_noun = "image/seed pairs"
    cfg: RefinerConfig
    model: RefinerModel

    def options(self) -> dict[str, Any]:
        return {name: getattr(self.cfg, name) for name in self.cfg.own_fields()}

    def setup(self, ckpt: dict[str, Any] | None) -> None:
        cfg = self.cfg
        multiple = self.Model.crop_multiple
        if cfg.crop < multiple or cfg.crop % multiple:
            raise ConfigError(f"--crop must be a multiple of {multiple} for {self.name}; got {cfg.crop}")
        self.image_labels: ImageLabels = self.training_labels(ckpt)
        if cfg.seeds is None:
            raise ConfigError("SEEDS: no seed masks given")
        pairs = find_pairs(cfg.images, cfg.seeds, skip_missing=cfg.skip_missing, what="SEEDS",  # type: ignore[arg-type]
                           keys=self.image_labels)  # fmt: skip
        self.pairs = self.apply_review(pairs, lambda p: p.key, cfg.seeds)
        check_pair_sizes(self.pairs)
        self.num_classes = len(cfg.class_names) + 1
        self.iters = cfg.iters
        self.clip, self.weights = self.frozen_clip(ckpt)
        if ckpt is not None:
            self.model = build_refiner(self.Model, ckpt, self.clip)
        else:
            seed_everything(cfg.seed)
            prompts = cfg.class_prompts or list(cfg.class_names)
            self.model = self.Model.create(self.clip, cfg.class_names, prompts, self.options())
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.learnable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    @property
    def samples(self) -> int:
        return len(self.pairs)

    def describe(self) -> str:
        learnable = sum(p.numel() for p in self.model.learnable_parameters())
        return (f"{self.name} on {self.device}: {len(self.pairs)} image/seed pairs, {len(self.cfg.class_names)} "
                f"classes, {learnable / 1e6:.2f}M learnable parameters on a frozen CLIP ({Path(self.weights.path).name})")  # fmt: skip

    def batches(self, start: int) -> Iterable[Any]:
        cfg = self.cfg
        labels = [self.image_labels[p.key] for p in self.pairs]
        dataset = RefineDataset(self.pairs, labels, self.num_classes, self.model.normalization, cfg.scales, cfg.crop,
                                cfg.seed)  # fmt: skip
        return self.stream(dataset, start)

    def schedule(self, iteration: int) -> dict[str, Any]:
        lr = warmup_cosine_lr(self.cfg.lr, iteration, self.iters, self.cfg.warmup, MIN_LR_FRACTION, WARMUP_START)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"].to(self.device, non_blocking=True)
        return self.model.training_loss(self.model(images), batch)

    def oom_hint(self) -> str:
        return f"--batch-size {self.cfg.batch} --crop {self.cfg.crop}"

    def model_config(self) -> dict[str, Any]:
        return {**self.model.model_config(), "clip_weights": clip_weights_record(self.weights)}

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.learnable_state_dict()

    def checkpoint_extra(self) -> dict[str, Any]:
        keys = {p.key for p in self.pairs}
        return {"image_labels": {k: v for k, v in self.image_labels.items() if k in keys}, "pairs": len(self.pairs)}

    def summary_extra(self) -> dict[str, Any]:
        return {
            "learnable_parameters": sum(p.numel() for p in self.model.learnable_parameters()),
            "pairs": len(self.pairs),
            "labelled_images": len(self.image_labels),
        }

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> RefinerPredictor:
        """``wsss-label predict`` on a refiner checkpoint: the CLIP it was trained with (its recorded
        file, else $WSSS_LABEL_WEIGHTS or the cached ViT-B/16), the training images' labels for eq. 14."""
        clip, _ = checkpoint_clip(ckpt, device)
        model = build_refiner(cls.Model, ckpt, clip)
        return RefinerPredictor(model, list(ckpt["class_names"]), device, options,
                                saved_image_labels(ckpt.get("image_labels")))  # fmt: skip


# -- prediction ----------------------------------------------------------------------------------
class RefinerPredictor(SoftmaxPredictor):
    """A trained refiner as a :class:`clipseg_cli.inference.Predictor` that makes pseudo masks:
    ``image_labels`` gives each image's labels, so predict applies eq. 14."""

    def __init__(self, model: RefinerModel, class_names: list[str], device: torch.device, options: InferenceOptions,
                 labels: ImageLabels) -> None:  # fmt: skip
        super().__init__(model, model.normalization, class_names, device, options)
        self.labels = labels

    def image_labels(self, key: str) -> list[int] | None:
        return self.labels.get(key)


def build_refiner(model_class: type[RefinerModel], ckpt: Mapping[str, Any], clip: CLIP) -> RefinerModel:
    """The refiner of a checkpoint on ``clip``, weights loaded; ConfigError (one line) if they do not fit."""
    try:
        model = model_class.from_config(clip, ckpt["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise model_mismatch(exc) from None
    model.load_learnable_state_dict(ckpt["model"])
    return model
