"""DeepLabV2 retrained on pseudo masks (``wsss-label retrain``): the segmenter that turns pseudo masks
into a segmentation network, with the confidence-guided loss of CLIP-ES.

The network (:mod:`clipseg_cli.segmentation.deeplab`) and its data
(:mod:`clipseg_cli.segmentation.dataset`) live in their own package; this module is the method:
its settings, SGD with DeepLab's parameter groups and the poly schedule, validation on ``--val``
at every checkpoint (``val.jsonl``, ``best.pt``), and its predictor.

SGD groups (Caffe ``lr_mult`` / ``decay_mult`` of DeepLab, as deeplab-pytorch trains it):
backbone convolutions 1x lr with weight decay; ASPP weights 10x lr with weight decay; ASPP biases
20x lr without weight decay; trainable BatchNorm parameters (random init only) 1x lr without
weight decay. Frozen parameters are left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from clipseg_cli.errors import ConfigError
from clipseg_cli.inference import InferenceOptions, SoftmaxPredictor, multiscale_probs
from clipseg_cli.methods import register
from clipseg_cli.methods.base import LearnedMethod, model_mismatch
from clipseg_cli.segmentation.dataset import PseudoMaskDataset, check_pair_sizes, find_pairs
from clipseg_cli.segmentation.deeplab import (
    ARCHS,
    DEFAULT_ARCH,
    IMAGENET_NORM,
    DeepLabV2,
    Normalization,
    arch_depth,
    build_deeplabv2,
    model_config,
)
from clipseg_cli.segmentation.init_weights import apply_init, read_init
from clipseg_cli.segmentation.losses import balanced_ce, confidence_guided_ce
from clipseg_cli.segmentation.validate import evaluate_pairs
from clipseg_cli.training.checkpoint import make_checkpoint, save_checkpoint
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import seed_everything
from clipseg_cli.training.run import BEST, VAL
from clipseg_cli.training.schedules import poly_lr, set_lr

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4


def build_optimizer(model: DeepLabV2, lr: float, momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """SGD over the groups described in the module docstring; each group keeps its ``lr_mult``."""
    conv, norm = [], []
    for module in model.backbone.modules():
        if isinstance(module, nn.Conv2d):
            conv += [p for p in module.parameters(recurse=False) if p.requires_grad]
        elif isinstance(module, nn.BatchNorm2d):
            norm += [p for p in module.parameters(recurse=False) if p.requires_grad]
    head_w = [c.weight for c in model.head.convs]
    head_b = [c.bias for c in model.head.convs]
    groups = [
        {"params": conv, "lr_mult": 1.0, "weight_decay": weight_decay, "name": "backbone"},
        {"params": head_w, "lr_mult": 10.0, "weight_decay": weight_decay, "name": "head.weight"},
        {"params": head_b, "lr_mult": 20.0, "weight_decay": 0.0, "name": "head.bias"},
    ]
    if norm:
        groups.append({"params": norm, "lr_mult": 1.0, "weight_decay": 0.0, "name": "backbone.bn"})
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass(kw_only=True)
class RetrainConfig(RunConfig):
    """Everything ``retrain`` is asked for; the defining fields fix the run (``--resume`` keeps them)."""

    masks: Path | None = setting(
        None, "Pseudo masks: MASKS/<rel>.png, or the OUT of `wsss-label label` (its masks/).",
        argument=True, metavar="MASKS", defining=False,
    )  # fmt: skip
    out: Path = setting(help="Run folder: last.pt, best.pt, metrics.jsonl, loss.png, run.json.",
                        flags=("--out", "-o"), metavar="DIR", defining=False)  # fmt: skip
    init: Path | None = setting(
        None, "Initial weights: torchvision ResNet .pth, deeplab-pytorch COCO/VOC .pth, or a wsss-label checkpoint. "
        "Default: random.", metavar="FILE",
    )  # fmt: skip
    arch: str = setting(DEFAULT_ARCH, "Network (resnet18: quick runs, tests).", choices=tuple(ARCHS))
    iters: int = setting(20000, "Training iterations.", minimum=1)
    batch: int = setting(10, "Images per training iteration.", flags=("--batch-size",), minimum=1)
    crop: int = setting(321, "Square training crop in pixels.", minimum=8)
    scales: tuple[float, ...] = setting((0.5, 0.75, 1.0, 1.25, 1.5), "Random rescaling factors, one drawn per image.",
                                        cli_default="0.5,0.75,1,1.25,1.5", metavar="S,S,...")  # fmt: skip
    lr: float = setting(2e-4, "Base learning rate (2e-4 ImageNet init, 2.5e-5 COCO init); ASPP 10x (bias 20x).",
                        positive=True)  # fmt: skip
    power: float = setting(0.9, "Poly decay: lr * (1 - it/iters) ** power.", minimum=0)
    balanced: bool = setting(False, "Class-balanced cross-entropy (the paper's COCO setting).")
    save_every: int = setting(1000, "Write last.pt every N iterations. Validates too, with --val.", minimum=1,
                              defining=False)  # fmt: skip
    val: tuple[Path, Path] | None = setting(
        None, "Validation images and GT masks: mIoU at each checkpoint, best model kept as best.pt.",
        defining=False, metavar="IMAGES GT",
    )  # fmt: skip
    skip_missing: bool = setting(False, "Train on the images that have a mask instead of stopping.", defining=False)


class DeepLabPredictor(SoftmaxPredictor):
    """A trained DeepLabV2 with its normalisation and test-time scales; the views are fused as the
    reference DeepLab code's MSC does: the pixel-wise max of their logits."""

    fuse = "max"


def build_from_checkpoint(ckpt: Mapping[str, Any]) -> tuple[DeepLabV2, Normalization]:
    """Rebuild a DeepLabV2 from a checkpoint's ``model_config`` and load its weights (strict)."""
    cfg = ckpt["model_config"]
    try:
        model = build_deeplabv2(cfg["arch"], int(cfg["num_classes"]), cfg.get("style", "pytorch"))
        model.load_state_dict(ckpt["model"], strict=True)
        norm = Normalization.from_dict(cfg["normalization"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise model_mismatch(exc) from None
    return model, norm


@register
class DeepLabRetrain(LearnedMethod):
    name = "deeplabv2"
    family = "segmenter"
    kind = "deeplabv2"
    summary = "Train DeepLabV2 on pseudo masks with the confidence-guided loss (pixels labelled 255 are ignored)."
    Config = RetrainConfig
    jsonl_files = (VAL,)
    samples_noun = "image/mask pairs"
    smoke_args = {"tiny": "--arch deeplabv2-resnet18 --crop 64 --batch-size 2", "base": ""}
    cfg: RetrainConfig
    model: DeepLabV2

    # -- set-up --
    def setup(self, ckpt: dict[str, Any] | None) -> None:
        cfg = self.cfg
        arch_depth(cfg.arch)
        if cfg.init is not None and not Path(cfg.init).is_file():
            raise ConfigError(f"--init {cfg.init}: no such file")
        val_images, val_gt = cfg.val or (None, None)
        if val_images is not None and not Path(val_images).exists():
            raise ConfigError(f"--val IMAGES {val_images}: no such folder")
        if val_gt is not None and not Path(val_gt).is_dir():
            raise ConfigError(f"--val GT {val_gt}: no such folder")
        if cfg.masks is None:
            raise ConfigError("MASKS: no pseudo masks given")
        pairs = find_pairs(cfg.images, cfg.masks, skip_missing=cfg.skip_missing)  # type: ignore[arg-type]
        self.pairs = self.apply_review(pairs, lambda p: p.key, cfg.masks)
        check_pair_sizes(self.pairs)
        self.val_pairs = []
        if val_images is not None and val_gt is not None:
            self.val_pairs = find_pairs(val_images, val_gt, skip_missing=True, what="--val GT")
            check_pair_sizes(self.val_pairs)
        self.num_classes = len(cfg.class_names) + 1
        self.iters = cfg.iters
        self.best: dict[str, Any] | None = None
        self.last_val: dict[str, Any] | None = None
        if ckpt is not None:
            model, self.norm = build_from_checkpoint(ckpt)
            if ckpt.get("bn_frozen"):
                model.freeze_bn()
            self.init_note = ckpt.get("init_note", "")
        else:
            seed_everything(cfg.seed)
            if cfg.init is not None:
                init = read_init(cfg.init)
                model = build_deeplabv2(cfg.arch, self.num_classes, init.style)
                self.init_note = apply_init(model, init, cfg.arch)
                model.freeze_bn()
                self.norm = init.norm
            else:
                model = build_deeplabv2(cfg.arch, self.num_classes)
                self.init_note = "random init (no --init): expect far lower accuracy than from pre-trained weights"
                self.reporter.message(f"warning: {self.init_note}")
                self.norm = IMAGENET_NORM
        self.style = model.backbone.style
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.lr)
        self.loss_fn = balanced_ce if cfg.balanced else confidence_guided_ce

    def restore(self, ckpt: Mapping[str, Any]) -> None:
        self.best, self.last_val = ckpt.get("best"), ckpt.get("last_val")

    @property
    def samples(self) -> int:
        return len(self.pairs)

    def describe(self) -> str:
        init = f"; init: {self.init_note}" if self.cfg.init is not None else ""
        return (f"{self.cfg.arch} on {self.device}: {len(self.pairs)} image/mask pairs, "
                f"{len(self.cfg.class_names)} classes{init}")  # fmt: skip

    # -- the loop --
    def batches(self, start: int) -> Iterable[Any]:
        cfg = self.cfg
        dataset = PseudoMaskDataset(self.pairs, self.num_classes, self.norm, cfg.scales, cfg.crop, cfg.seed)
        return self.stream(dataset, start)

    def schedule(self, iteration: int) -> dict[str, Any]:
        lr = poly_lr(self.cfg.lr, iteration, self.iters, self.cfg.power)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        return self.loss_fn(self.model(images).float(), masks), {}

    def oom_hint(self) -> str:
        return f"--batch-size {self.cfg.batch} --crop {self.cfg.crop}"

    # -- checkpoints --
    def model_config(self) -> dict[str, Any]:
        return model_config(self.cfg.arch, self.num_classes, self.style, self.norm)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"bn_frozen": self.model.bn_frozen, "init_note": self.init_note, "best": self.best,
                "last_val": self.last_val, "pairs": len(self.pairs)}  # fmt: skip

    def summary_extra(self) -> dict[str, Any]:
        return {
            "init": self.init_note,
            "bn_frozen": self.model.bn_frozen,
            "pairs": len(self.pairs),
            "val_pairs": len(self.val_pairs),
            "val": {"last": self.last_val, "best": self.best},
            "files": {"best": BEST if self.best else None},
        }

    def _validate(self) -> dict[str, Any]:
        self.model.eval()
        try:
            return evaluate_pairs(
                lambda img: multiscale_probs(self.model, self.norm, img, self.device),
                self.val_pairs,
                self.num_classes,
                self.cfg.class_names,
            )
        finally:
            self.model.train()

    def before_save(self, iteration: int, interrupted: bool) -> None:
        """Validate on --val (not on Ctrl-C), keep best.pt on a new best mIoU."""
        if interrupted or not self.val_pairs:
            return
        cfg = self.cfg
        result = self._validate()
        row = {"iteration": iteration, **result}
        with open(Path(cfg.out) / VAL, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.last_val = row
        miou = result["miou"]
        self.reporter.message(f"iteration {iteration}: val mIoU {miou if miou is None else round(100 * miou, 2)}")
        if miou is not None and (self.best is None or miou > self.best["miou"]):
            self.best = {"iteration": iteration, "miou": miou}
            save_checkpoint(
                Path(cfg.out) / BEST,
                make_checkpoint(self.kind, self.model_config(), cfg.class_names, self.model.state_dict(),
                                iteration=iteration, max_iter=self.iters, val=row),
            )  # fmt: skip

    # -- prediction --
    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> DeepLabPredictor:
        model, norm = build_from_checkpoint(ckpt)
        return DeepLabPredictor(model, norm, list(ckpt["class_names"]), device, options)
