"""The classic CAM baseline (Zhou et al., CVPR 2016) as IRN (Ahn et al., CVPR 2019) trains it:
``wsss-label train-cam cam``. The CAM network CLIMS starts from (``train-cam clims --init RUN/last.pt``).

- Network (:class:`ResNetCAM`): our plain-torch ResNet (torchvision key layout), output stride 16
  (layer4 not strided, IRN's ``strides=(2, 2, 2, 1)``), a bias-free 1x1 convolution to K maps.
  Training: global average pooling of the features, the 1x1 convolution, multi-label soft margin
  loss. BatchNorm statistics stay frozen (IRN's ``FixedBatchNorm``); the first ``frozen_stages``
  stages (1: conv1 + layer1, 2: + layer2, IRN's default) get no gradient.
- Data (IRN's ``VOC12ClassificationDataset``): the long side resized (bicubic) to a random length in
  ``resize_long`` x ``crop``, horizontal flip, ImageNet normalisation, a ``crop`` x ``crop`` window
  (a shorter side is placed at a random offset, the rest 0 = the mean pixel).
- Optimisation (IRN's ``PolyOptimizer``): SGD, weight decay 1e-4, no momentum, ``lr`` (0.1) with poly
  decay (power 0.9) over ``iters``, the classifier at 10x.
- CAMs (IRN's ``make_cam``, :class:`CamPredictor`): ReLU of the 1x1 convolution on the features,
  summed over the test scales and their flips, each view upsampled to the image rounded up to a
  multiple of 16 and cropped, each class divided by its maximum; only the image's classes;
  background a constant threshold (``bg_threshold``, IRN's ``cam_eval_thres`` 0.15); probabilities
  renormalised to sum to 1 (so ``--crf`` applies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.data.labels import ImageLabels, saved_image_labels
from clipseg_cli.errors import ConfigError
from clipseg_cli.inference import InferenceOptions
from clipseg_cli.methods import register
from clipseg_cli.methods.base import CamMethod, model_mismatch
from clipseg_cli.segmentation.augment import place_crop, resize_long
from clipseg_cli.segmentation.deeplab import IMAGENET_NORM, Normalization
from clipseg_cli.segmentation.init_weights import InitWeights, read_init
from clipseg_cli.segmentation.resnet import ResNet
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import LabelledImages, seed_everything
from clipseg_cli.training.run import LAST
from clipseg_cli.training.schedules import poly_lr, set_lr

KIND = "cam.cam"
ARCHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
STRIDE = 16
WEIGHT_DECAY, HEAD_LR_MULT, POWER = 1e-4, 10.0, 0.9


# -- the network ---------------------------------------------------------------------------------
class ResNetCAM(nn.Module):
    """ResNet (output stride 16) + bias-free 1x1 convolution to K class maps.

    ``cams`` (and ``forward``): the CAMs, ReLU of the class maps (B, K, H/16, W/16); ``logits``: the
    image scores (B, K), the 1x1 convolution of the globally average-pooled features (= the mean of
    the class maps before the ReLU). BatchNorm statistics never update; stages below
    ``frozen_stages`` run without gradient."""

    def __init__(self, depth: int, num_classes: int, style: str = "pytorch", frozen_stages: int = 0) -> None:
        super().__init__()
        self.backbone = ResNet(depth, strides=(1, 2, 2, 1), style=style)  # type: ignore[arg-type]
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        self.frozen_stages = int(frozen_stages)
        for stage in self.stages()[: self.frozen_stages]:
            stage.requires_grad_(False)

    def stages(self) -> list[nn.Module]:
        b = self.backbone
        return [nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1), b.layer2, b.layer3, b.layer4]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.stages()):
            if i < self.frozen_stages:
                with torch.no_grad():
                    x = stage(x)
            else:
                x = stage(x)
        return x

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3), keepdim=True)).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.class_maps(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cams(x)

    def trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone, classifier) parameters that train."""
        return [p for p in self.backbone.parameters() if p.requires_grad], list(self.classifier.parameters())

    def train(self, mode: bool = True) -> ResNetCAM:
        super().train(mode)
        for m in self.modules():  # frozen BN statistics (IRN's FixedBatchNorm)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def load_backbone_init(net: ResNetCAM, init: InitWeights, arch: str) -> str:
    """Load a parsed ``--init`` file (:func:`clipseg_cli.segmentation.init_weights.read_init`: a
    torchvision-layout or deeplab-pytorch ResNet) into ``net.backbone``, keys checked; a one-line note."""
    if init.depth != net.backbone.depth:
        raise ConfigError(f"--init {init.path} holds a ResNet-{init.depth} but --arch {arch} is ResNet-{net.backbone.depth}")
    expected = net.backbone.state_dict()
    sd = {k: v.to(expected[k].dtype) for k, v in init.backbone.items() if k in expected}
    extra = [k for k in init.backbone if k not in expected]
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    bad = [k for k, v in sd.items() if v.shape != expected[k].shape]
    if extra or missing or bad:
        raise ConfigError(f"--init {init.path}: backbone keys do not match ({(extra or missing or bad)[0]!r})")
    for k, v in expected.items():
        sd.setdefault(k, torch.zeros_like(v))
    net.backbone.load_state_dict(sd, strict=True)
    return f"{init.source} ResNet-{init.depth} backbone from {Path(init.path).name}"


def sgd(net: ResNetCAM, lr: float, momentum: float, weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """SGD over the trainable backbone at ``lr`` and the classifier at 10x (IRN's and CLIMS's
    groups); each group keeps its ``lr_mult`` for :func:`clipseg_cli.training.schedules.set_lr`."""
    backbone, head = net.trainable()
    groups = [{"params": backbone, "lr_mult": 1.0}, {"params": head, "lr_mult": HEAD_LR_MULT}]
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


# -- data ----------------------------------------------------------------------------------------
class CamImages(LabelledImages):
    """IRN's training crops of labelled images; items ``image`` (3, crop, crop), ``labels`` (K,), ``error``."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[Sequence[int]], num_classes: int, norm: Normalization,
                 resize: tuple[float, float], crop: int, seed: int) -> None:  # fmt: skip
        super().__init__(paths, labels, num_classes, seed, background=False, blank=crop)
        self.norm, self.resize, self.crop = norm, resize, crop

    def make(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
        lo, hi = (int(round(f * self.crop)) for f in self.resize)
        image = resize_long(image, int(rng.integers(lo, hi + 1)))
        if rng.random() < 0.5:
            image = image[:, ::-1]
        x = self.norm.apply(image).transpose(1, 2, 0)
        x, _ = place_crop(x, self.crop, rng)
        return {"image": torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))}


# -- training ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CamConfig(RunConfig):
    """Everything ``train-cam cam`` is asked for; the defining fields fix the run. Defaults: IRN's
    ``run_sample.py`` (VOC train_aug)."""

    arch: str = setting("resnet50", "CAM backbone: resnet50 (IRN's) | resnet101 | resnet34 | resnet18.", choices=tuple(ARCHS))
    init: Path | None = setting(None, "Backbone init: a torchvision-layout ImageNet ResNet (e.g. resnet50-*.pth); default random.",
                                defining=False, metavar="FILE")  # fmt: skip
    iters: int = setting(3305, "Training iterations (default: IRN's 5 epochs of VOC train_aug at batch 16).", minimum=1)
    batch: int = setting(16, "Images per training iteration.", flags=("--batch-size",), minimum=1)
    crop: int = setting(512, "Square training crop in pixels.", minimum=32)
    resize_long: tuple[float, ...] = setting((0.625, 1.25), "Range of the random long side, as fractions of --crop "
                                             "(IRN: 320-640 pixels at crop 512).", cli_default="0.625,1.25", metavar="LO,HI")  # fmt: skip
    lr: float = setting(0.1, "SGD learning rate (1x1 classifier at 10x), poly decay (power 0.9).", positive=True)
    frozen_stages: int = setting(2, "First ResNet stages without gradient (IRN: 2 = conv1 to layer2; 0: all train).", minimum=0)
    bg_threshold: float = setting(0.15, "Background score against max-normalised CAMs, used by predict (IRN's).")
    save_every: int = setting(500, "Write last.pt every N iterations.", minimum=1, defining=False)

    def validate(self) -> None:
        super().validate()
        if len(self.resize_long) != 2 or self.resize_long[0] > self.resize_long[1]:
            raise ConfigError(f"--resize-long must be two fractions LO,HI with LO <= HI; got {','.join(map(str, self.resize_long))}")
        if self.frozen_stages > 4:
            raise ConfigError(f"--frozen-stages must be 0 to 4 (a ResNet has 4 stages), got {self.frozen_stages}")


def cam_model_config(net: ResNetCAM, arch: str, norm: Normalization, **extra: Any) -> dict[str, Any]:
    return {"arch": arch, "style": net.backbone.style, "num_classes": net.classifier.out_channels,
            "normalization": norm.to_dict(), "frozen_stages": net.frozen_stages, **extra}  # fmt: skip


@register
class Cam(CamMethod):
    name = "cam"
    kind = KIND
    summary = (
        "The classic CAM baseline as IRN trains it: ResNet-50, global average pooling, multi-label soft margin "
        "loss; predict its masks with `wsss-label predict --checkpoint RUN/last.pt`; CLIMS starts from it "
        "(`train-cam clims --init RUN/last.pt`)."
    )
    Config = CamConfig
    predict_options = ("bg_threshold",)
    smoke_args = {"tiny": "--arch resnet18 --crop 64 --batch-size 2 --frozen-stages 0", "base": ""}
    cfg: CamConfig
    model: ResNetCAM

    def setup(self, ckpt: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.load_labelled_images(ckpt)
        self.iters = cfg.iters
        seed_everything(cfg.seed)
        if ckpt is not None:
            self.model, self.norm, _ = rebuild(ckpt, ResNetCAM)
            self.init_note = f"resumed from {LAST} (iteration {int(ckpt['iteration'])})"
        else:
            init = read_init(cfg.init) if cfg.init is not None else None
            self.model = ResNetCAM(ARCHS[cfg.arch], len(cfg.class_names), init.style if init else "pytorch", cfg.frozen_stages)
            self.norm, self.init_note = IMAGENET_NORM, "random init"
            if init is not None:
                self.norm, self.init_note = init.norm, load_backbone_init(self.model, init, cfg.arch)
        self.model.to(self.device)
        self.optimizer = sgd(self.model, cfg.lr, momentum=0.0)

    def describe(self) -> str:
        return (f"cam {self.cfg.arch} on {self.device}: {len(self.keys)} labelled images, "
                f"{len(self.cfg.class_names)} classes; init: {self.init_note}")  # fmt: skip

    def batches(self, start: int) -> Iterable[Any]:
        cfg = self.cfg
        resize = (float(cfg.resize_long[0]), float(cfg.resize_long[1]))
        dataset = CamImages(self.paths, self.key_labels, len(cfg.class_names), self.norm, resize, cfg.crop, cfg.seed)
        return self.stream(dataset, start)

    def schedule(self, iteration: int) -> dict[str, Any]:
        lr = poly_lr(self.cfg.lr, iteration, self.iters, POWER)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"].to(self.device, non_blocking=True)
        y = batch["labels"].to(self.device)
        loss = F.multilabel_soft_margin_loss(self.model.logits(images).float(), y)
        return loss, {}

    def oom_hint(self) -> str:
        return f"--batch-size {self.cfg.batch} --crop {self.cfg.crop}"

    def model_config(self) -> dict[str, Any]:
        return cam_model_config(self.model, self.cfg.arch, self.norm, method="cam", bg_threshold=self.cfg.bg_threshold)

    def summary_extra(self) -> dict[str, Any]:
        return {"init": self.init_note, "images": len(self.keys)}

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> CamPredictor:
        """``wsss-label predict`` on a ``cam.cam`` checkpoint (IRN's ``make_cam`` on ``options.scales``
        and flips, background at ``options.bg_threshold`` or the run's)."""
        net, norm, cfg = rebuild(ckpt, ResNetCAM)
        threshold = getattr(options, "bg_threshold", None)
        if threshold is None:
            threshold = float(cfg.get("bg_threshold", 0.15))
        return CamPredictor(net, norm, list(ckpt["class_names"]), device, options, threshold, saved_image_labels(ckpt.get("image_labels")))


def rebuild(ckpt: Mapping[str, Any], network: type[ResNetCAM]) -> tuple[ResNetCAM, Normalization, Mapping[str, Any]]:
    """The network of a checkpoint's ``model_config`` with its weights, and its normalisation."""
    cfg = ckpt["model_config"]
    try:
        net = network(ARCHS[cfg["arch"]], int(cfg["num_classes"]), cfg.get("style", "pytorch"), int(cfg.get("frozen_stages", 0)))
        net.load_state_dict(ckpt["model"], strict=True)
        norm = Normalization.from_dict(cfg["normalization"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise model_mismatch(exc) from None
    return net, norm, cfg


# -- prediction ----------------------------------------------------------------------------------
class CamPredictor:
    """A ResNet CAM network as a :class:`clipseg_cli.inference.Predictor`: its CAMs (``net.cams``, ReLU
    of the class maps, for CLIMS too as its authors' ``make_cam``) summed over ``options.scales`` and
    flips, max-normalised per class; the image's classes against a constant background score."""

    def __init__(self, net: ResNetCAM, norm: Normalization, class_names: list[str], device: torch.device,
                 options: InferenceOptions, bg_threshold: float, labels: ImageLabels) -> None:  # fmt: skip
        self.net = net.to(device).eval()
        self.norm, self.class_names, self.device, self.options = norm, class_names, device, options
        self.bg_threshold = float(bg_threshold)
        self.labels = labels

    def image_labels(self, key: str) -> list[int] | None:
        return self.labels.get(key)

    @torch.no_grad()
    def cams(self, image: np.ndarray) -> np.ndarray:
        """(K, H, W): every view's maps upsampled to the image rounded up to a multiple of 16 and
        cropped to it (IRN's ``strided_up_size``), summed, each class divided by its max (+1e-5)."""
        height, width = image.shape[:2]
        up = (-(-height // STRIDE) * STRIDE, -(-width // STRIDE) * STRIDE)
        x = torch.from_numpy(self.norm.apply(image)).unsqueeze(0).to(self.device)
        total = torch.zeros(self.net.classifier.out_channels, height, width, device=self.device)
        for s in self.options.scales:
            xs = x
            if s != 1.0:
                xs = F.interpolate(x, size=(max(STRIDE, round(height * s)), max(STRIDE, round(width * s))), mode="bilinear",
                                   align_corners=False)  # fmt: skip
            maps = self.net.cams(torch.cat([xs, xs.flip(-1)]) if self.options.flip else xs).float()
            if self.options.flip:
                maps = torch.stack([maps[0], maps[1].flip(-1)])
            total += F.interpolate(maps, size=up, mode="bilinear", align_corners=False)[:, :, :height, :width].sum(0)
        return (total / (total.flatten(1).amax(dim=1).view(-1, 1, 1) + 1e-5)).cpu().numpy()

    def class_probabilities(self, image: np.ndarray, cams: np.ndarray, values: list[int]) -> np.ndarray:
        """The maps of the image's mask values ``values`` (1 + c), (len(values), H, W)."""
        return cams[[v - 1 for v in values]]

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        cams = self.cams(image)
        k, height, width = cams.shape
        values = list(range(1, k + 1)) if labels is None else [int(v) for v in labels if 1 <= int(v) <= k]
        probs = np.zeros((k + 1, height, width), np.float32)
        probs[0] = self.bg_threshold
        if values:
            probs[values] = self.class_probabilities(image, cams, values)
        return probs / probs.sum(axis=0, keepdims=True).clip(min=1e-8)
