"""CLIMS (Xie et al., CVPR 2022, section 3) as a learned CAM generator: ``wsss-label train-cam clims``.

- CAM network (eq. 3): our plain-torch ResNet (torchvision key layout, output stride 16 as the
  authors' IRN ResNet-50: layer4 not strided), a 1x1 convolution to K maps, sigmoid; no pooling.
  BatchNorm statistics stay frozen (IRN's ``FixedBatchNorm``), so a run is a pure function of
  (seed, iteration) and ``--resume`` is exact.
- Text-driven evaluator: the frozen CLIP of the main command (never trained, no gradient to its
  weights, but gradients flow *through* it to the CAM). For every labelled class k of an image,
  ``X * P_k`` and ``X * (1 - P_k)`` (pixels in 0..1, both resized to CLIP's input) are encoded with
  CLIP's standard class-token image embedding (ln_post(cls) @ proj; not CLIP-ES's avg-token one);
  text ``a photo of {}.`` per class, and the class-related background prompts of
  ``prompts/clims-background.json`` for CBS.
- Losses, eqs. 6-12, on cosine similarities clamped to [1e-4, 1 - 1e-4] before the log (as the
  authors' code; a cosine can be <= 0):
  OTM = -sum_k y_k log s_k^oo, BTM = -sum_k y_k log(1 - s_k^bo),
  CBS = -sum_k sum_l y_k log(1 - s_kl^ob), REG = 1/K sum_k mean_hw P_k,
  total = alpha OTM + beta BTM + gamma CBS + delta REG (10, 25, 29.5, 1.15).
  ``reduction="mean"`` (default) divides OTM/BTM by the batch's number of positive (image, class)
  pairs and CBS by pairs x L, as the authors' code (``.mean()``) that those weights were tuned
  with; ``reduction="sum"`` is the equations literally, averaged over the images of the batch.
  REG is averaged over the batch either way.
- Training: random rescale, pad/crop, flip (retrain's deterministic stream); SGD (momentum 0.9,
  weight decay 1e-4; the 1x1 head at 10x lr), cosine schedule from --lr to 0.
- Prediction: sigmoid maps averaged over scales (+ flips), upsampled to the image, each class map
  divided by its max (IRN's ``make_cam``); the image's classes only; background = a constant
  threshold (``bg_threshold``); probabilities renormalised to sum to 1 (so --crf applies).
  Optionally (``options.caa``, when ``wsss-label predict`` passes it) the maps are refined by
  CLIP-ES's CAA on the frozen CLIP's attention of the same image (:meth:`ClimsPredictor.caa`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
from clipseg_cli.data.labels import ImageLabels, saved_image_labels
from clipseg_cli.errors import ConfigError
from clipseg_cli.inference import InferenceOptions
from clipseg_cli.methods import register
from clipseg_cli.methods.base import (
    CamMethod,
    checkpoint_clip,
    clip_weights_record,
    model_mismatch,
    weights_setting,
)
from clipseg_cli.segmentation.augment import train_augment
from clipseg_cli.segmentation.deeplab import IMAGENET_NORM, Normalization
from clipseg_cli.segmentation.resnet import ResNet
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import LabelledImages, resolve_workers, seed_everything, stream_loader
from clipseg_cli.training.run import LAST
from clipseg_cli.training.schedules import cosine_lr, set_lr

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP, VisionTransformer

METHOD = "clims"
KIND = "cam.clims"
ARCHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
OBJECT_TEMPLATE = "a photo of {}."
BACKGROUND_FILE = "clims-background.json"
SIM_CLAMP = (1e-4, 1.0 - 1e-4)
MOMENTUM, WEIGHT_DECAY, HEAD_LR_MULT = 0.9, 1e-4, 10.0
CAA_LAMBDA = 0.4  # box threshold of CAA (CLIP-ES's VOC setting)

# Loss weights and evaluator settings (all `train-cam clims` options); saved in the checkpoint.
OPTIONS: dict[str, Any] = {
    "alpha": 10.0,  # OTM
    "beta": 25.0,  # BTM
    "gamma": 29.5,  # CBS
    "delta": 1.15,  # REG
    "reduction": "mean",  # "mean": the authors' code; "sum": eqs. 6, 8, 10 literally (per image)
    "clip_size": 0,  # CLIP input side; 0: the checkpoint's image_resolution (224 for ViT-B/16)
    "bg_threshold": 0.15,  # predict: background score against max-normalised CAMs
}


# -- data files ----------------------------------------------------------------------------------
def background_prompts(class_names: Sequence[str]) -> list[list[str]]:
    """Class-related background words per class from ``prompts/clims-background.json``
    (a class the file does not list gets none: no CBS term for it)."""
    data = json.loads(resources.files("clipseg_cli.prompts").joinpath(BACKGROUND_FILE).read_text(encoding="utf-8"))
    table = {" ".join(k.lower().split()): list(v) for k, v in data["classes"].items()}
    return [list(table.get(" ".join(n.lower().split()), [])) for n in class_names]


# -- the CAM network (eq. 3) -----------------------------------------------------------------------
class CAMNet(nn.Module):
    """ResNet (output stride 16) + 1x1 conv to K maps + sigmoid: (B, 3, H, W) -> (B, K, H/16, W/16)."""

    def __init__(self, depth: int, num_classes: int, style: str = "pytorch") -> None:
        super().__init__()
        self.backbone = ResNet(depth, strides=(1, 2, 2, 1), style=style)  # type: ignore[arg-type]
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.backbone(x)))

    def train(self, mode: bool = True) -> CAMNet:
        super().train(mode)
        for m in self.modules():  # frozen BN statistics (IRN's FixedBatchNorm)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self


def build_camnet(arch: str, num_classes: int, init: Path | None = None) -> tuple[CAMNet, Normalization, str]:
    """A CAM network of ``arch``, its backbone from ``--init`` (torchvision or deeplab-pytorch layout)."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if init is None:
        return CAMNet(ARCHS[arch], num_classes), IMAGENET_NORM, "random init"
    from clipseg_cli.segmentation.init_weights import read_init

    w = read_init(init)
    if w.depth != ARCHS[arch]:
        raise ConfigError(f"--init {init} holds a ResNet-{w.depth} but --arch {arch} is ResNet-{ARCHS[arch]}")
    net = CAMNet(w.depth, num_classes, w.style)
    expected = net.backbone.state_dict()
    sd = {k: v.to(expected[k].dtype) for k, v in w.backbone.items() if k in expected}
    extra = [k for k in w.backbone if k not in expected]
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    bad = [k for k, v in sd.items() if v.shape != expected[k].shape]
    if extra or missing or bad:
        raise ConfigError(f"--init {init}: backbone keys do not match ({(extra or missing or bad)[0]!r})")
    for k, v in expected.items():
        sd.setdefault(k, torch.zeros_like(v))
    net.backbone.load_state_dict(sd, strict=True)
    return net, w.norm, f"{w.source} ResNet-{w.depth} backbone from {Path(init).name}"


# -- the frozen CLIP evaluator -------------------------------------------------------------------
def clip_image_embedding(visual: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """CLIP's standard image embedding (class token after ln_post, projected), L2-normalised."""
    x = visual.transformer(visual.embed(images))
    x = visual.ln_post(x[:, 0, :]) @ visual.proj
    return x / x.norm(dim=-1, keepdim=True)


class ClimsEvaluator(nn.Module):
    """Frozen CLIP + the text features of the classes and their background prompts."""

    def __init__(self, clip: CLIP, class_names: Sequence[str], bg_prompts: Sequence[Sequence[str]], clip_size: int = 0) -> None:  # fmt: skip
        super().__init__()
        from clipseg_cli.clip.text import TextEncoder

        self.clip = clip.eval().requires_grad_(False)
        patch = clip.visual.patch_size
        size = clip_size or clip.config.image_resolution
        self.clip_size = max(patch, size // patch * patch)
        enc = TextEncoder(clip, [OBJECT_TEMPLATE])
        self.register_buffer("text_obj", enc.encode(list(class_names)).float(), persistent=False)
        longest = max((len(p) for p in bg_prompts), default=0)
        dim = self.text_obj.shape[1]
        bg = torch.zeros(len(class_names), max(longest, 1), dim, device=self.text_obj.device)
        valid = torch.zeros(len(class_names), max(longest, 1), dtype=torch.bool, device=self.text_obj.device)
        for k, words in enumerate(bg_prompts):
            if words:
                bg[k, : len(words)] = enc.encode(list(words)).float()
                valid[k, : len(words)] = True
        self.register_buffer("text_bg", bg, persistent=False)
        self.register_buffer("bg_valid", valid, persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> ClimsEvaluator:
        super().train(mode)
        self.clip.eval()
        return self

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        x = (images01 - self.mean) / self.std
        return clip_image_embedding(self.clip.visual, x.to(self.clip.visual.conv1.weight.dtype)).float()

    def similarities(self, rgb01: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``rgb01`` (B, 3, H, W) in 0..1, ``cams`` (B, K, h, w) = P, ``labels`` (B, K) 0/1.

        Returns s_oo, s_bo (B, K) and s_ob (B, K, L), filled (with 0.5) where y_k = 0."""
        size = (self.clip_size, self.clip_size)
        b, k = labels.shape
        x = F.interpolate(rgb01, size=size, mode="bilinear", align_corners=False)
        p = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        bi, ki = torch.nonzero(labels > 0, as_tuple=True)
        s_oo = cams.new_full((b, k), 0.5)
        s_bo = cams.new_full((b, k), 0.5)
        s_ob = cams.new_full((b, k, self.text_bg.shape[1]), 0.5)
        if bi.numel():
            pk = p[bi, ki].unsqueeze(1)  # (P, 1, S, S)
            xs = x[bi]
            v = self.encode(torch.cat([xs * pk, xs * (1.0 - pk)]))
            v_io, v_ib = v[: bi.numel()], v[bi.numel() :]
            t = self.text_obj[ki]
            s_oo = s_oo.index_put((bi, ki), (v_io * t).sum(-1))
            s_bo = s_bo.index_put((bi, ki), (v_ib * t).sum(-1))
            s_ob = s_ob.index_put((bi, ki), torch.einsum("pd,pld->pl", v_io, self.text_bg[ki]).float())
        return {"s_oo": s_oo, "s_bo": s_bo, "s_ob": s_ob}


# -- losses (eqs. 6-12) --------------------------------------------------------------------------
def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp(*SIM_CLAMP))


def _reduce(total: torch.Tensor, count: torch.Tensor, batch: int, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return total / count.clamp(min=1)
    if reduction == "sum":
        return total / max(batch, 1)
    raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def otm_loss(s_oo: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 6: -sum_k y_k log s_k^oo."""
    y = y.to(s_oo.dtype)
    return _reduce(-(y * _log(s_oo)).sum(), y.sum(), y.shape[0], reduction)


def btm_loss(s_bo: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 8: -sum_k y_k log(1 - s_k^bo)."""
    y = y.to(s_bo.dtype)
    return _reduce(-(y * _log(1.0 - s_bo)).sum(), y.sum(), y.shape[0], reduction)


def cbs_loss(s_ob: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Eq. 10: -sum_k sum_l y_k log(1 - s_kl^ob), over each class's own L background prompts
    (``valid`` (K, L) marks them)."""
    w = y.to(s_ob.dtype).unsqueeze(-1) * valid.to(s_ob.dtype).unsqueeze(0)
    return _reduce(-(w * _log(1.0 - s_ob)).sum(), w.sum(), y.shape[0], reduction)


def reg_loss(cams: torch.Tensor) -> torch.Tensor:
    """Eq. 12: 1/K sum_k S_k, S_k the mean activation of P_k; averaged over the batch."""
    return cams.mean()


def clims_loss(sims: Mapping[str, torch.Tensor], cams: torch.Tensor, y: torch.Tensor, valid: torch.Tensor,
               options: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Eq. 13 and its parts (unweighted) for metrics.jsonl."""
    red = str(options.get("reduction", "mean"))
    parts = {
        "otm": otm_loss(sims["s_oo"], y, red),
        "btm": btm_loss(sims["s_bo"], y, red),
        "cbs": cbs_loss(sims["s_ob"], y, valid, red),
        "reg": reg_loss(cams),
    }
    total = (
        float(options["alpha"]) * parts["otm"]
        + float(options["beta"]) * parts["btm"]
        + float(options["gamma"]) * parts["cbs"]
        + float(options["delta"]) * parts["reg"]
    )
    return total, {k: float(v.detach()) for k, v in parts.items()}


# -- data ----------------------------------------------------------------------------------------
class ClimsDataset(LabelledImages):
    """Augmented crops of labelled images (the retrain stream: a pure function of (seed, sample)).
    Items: ``image`` (network input), ``rgb`` (3, crop, crop) float in 0..1 (padding black),
    ``labels`` (K,) float, ``error``."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[Sequence[int]], num_classes: int, norm: Normalization,
                 scales: Sequence[float], crop: int, seed: int) -> None:  # fmt: skip
        super().__init__(paths, labels, num_classes, seed, background=False, blank=crop)
        self.norm, self.scales, self.crop = norm, tuple(scales), crop

    def make(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
        valid = np.ones(image.shape[:2], np.uint8)
        image, valid = train_augment(image, valid, rng, self.scales, self.crop, self.norm.mean_rgb)
        rgb = np.where((valid == 1)[..., None], image, 0.0).astype(np.float32) / 255.0
        return {
            "image": torch.from_numpy(self.norm.apply(image)),
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
        }


# -- training ------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ClimsConfig(RunConfig):
    """Everything ``train-cam clims`` is asked for; the defining fields fix the run."""

    arch: str = setting("resnet50", "CAM backbone: resnet50 (paper) | resnet101 | resnet34 | resnet18.",
                        choices=tuple(ARCHS))  # fmt: skip
    init: Path | None = setting(None, "Backbone init: a torchvision-layout ResNet file (e.g. resnet50-*.pth); default random.",
                                defining=False, metavar="FILE")  # fmt: skip
    weights: Path | None = weights_setting()
    iters: int = setting(6615, "Training iterations (default: 10 epochs of VOC train_aug at batch 16).", minimum=1)
    batch: int = setting(16, "Images per training iteration.", flags=("--batch-size",), minimum=1)
    crop: int = setting(512, "Square training crop in pixels.", minimum=32)
    scales: tuple[float, ...] = setting((0.7, 0.85, 1.0, 1.15, 1.3), "Random rescaling factors, one drawn per image.",
                                        cli_default="0.7,0.85,1,1.15,1.3", metavar="S,S,...")  # fmt: skip
    lr: float = setting(2.5e-4, "SGD learning rate (1x1 head at 10x), cosine annealing to 0.", positive=True)
    alpha: float = setting(OPTIONS["alpha"], "Weight of L_OTM (eq. 6).")
    beta: float = setting(OPTIONS["beta"], "Weight of L_BTM (eq. 8).")
    gamma: float = setting(OPTIONS["gamma"], "Weight of L_CBS (eq. 10).")
    delta: float = setting(OPTIONS["delta"], "Weight of L_REG (eq. 12).")
    reduction: str = setting(OPTIONS["reduction"], "mean: over positive (image, class) pairs, as the authors' code; "
                             "sum: eqs. 6/8/10 literally, per image.", choices=("mean", "sum"))  # fmt: skip
    clip_size: int = setting(OPTIONS["clip_size"], "Side CLIP sees the masked images at (0: the checkpoint's, 224).",
                             minimum=0)  # fmt: skip
    bg_threshold: float = setting(OPTIONS["bg_threshold"],
                                  "Background score against max-normalised CAMs, used by predict.")  # fmt: skip
    save_every: int = setting(500, "Write last.pt every N iterations.", minimum=1, defining=False)

    def options(self) -> dict[str, Any]:
        """The loss weights and evaluator settings (saved in the checkpoint's model_config)."""
        return {name: getattr(self, name) for name in OPTIONS}


@register
class Clims(CamMethod):
    name = METHOD
    kind = KIND
    summary = (
        "CLIMS (CVPR 2022): train a ResNet CAM network (sigmoid maps, no pooling) with a frozen CLIP as "
        "text-driven evaluator (OTM, BTM, CBS, REG losses); predict its masks with "
        "`wsss-label predict --checkpoint RUN/last.pt --labels LABELS`."
    )
    Config = ClimsConfig
    predict_options = ("bg_threshold", "caa")
    smoke_args = {"tiny": "--arch resnet18 --crop 64 --clip-size 32 --batch-size 2", "base": ""}
    cfg: ClimsConfig
    model: CAMNet

    def setup(self, ckpt: dict[str, Any] | None) -> None:
        cfg = self.cfg
        if cfg.init is not None and not Path(cfg.init).is_file():
            raise ConfigError(f"--init {cfg.init}: no such file")
        self.load_labelled_images(ckpt)
        self.clip, self.weights = self.frozen_clip(ckpt)
        self.bg_prompts = background_prompts(cfg.class_names)
        self.iters = cfg.iters
        seed_everything(cfg.seed)
        self.model, self.norm, self.init_note = build_camnet(cfg.arch, len(cfg.class_names),
                                                             cfg.init if ckpt is None else None)  # fmt: skip
        if ckpt is not None:
            self.norm = Normalization.from_dict(ckpt["model_config"]["normalization"])
            self.model = CAMNet(ARCHS[cfg.arch], len(cfg.class_names), ckpt["model_config"].get("style", "pytorch"))
            self.model.load_state_dict(ckpt["model"], strict=True)
            self.init_note = f"resumed from {LAST} (iteration {int(ckpt['iteration'])})"
        self.model.to(self.device)
        self.evaluator = ClimsEvaluator(self.clip, cfg.class_names, self.bg_prompts, int(cfg.clip_size)).to(self.device)
        groups = [
            {"params": list(self.model.backbone.parameters()), "lr_mult": 1.0},
            {"params": list(self.model.classifier.parameters()), "lr_mult": HEAD_LR_MULT},
        ]
        for g in groups:
            g["lr"] = cfg.lr * g["lr_mult"]
        self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def describe(self) -> str:
        return (f"clims {self.cfg.arch} on {self.device}: {len(self.keys)} labelled images, "
                f"{len(self.cfg.class_names)} classes, frozen CLIP {Path(self.weights.path).name}; init: {self.init_note}")  # fmt: skip

    def batches(self, start: int) -> Iterable[Any]:
        cfg = self.cfg
        labels = [self.image_labels[k] for k in self.keys]
        dataset = ClimsDataset(self.paths, labels, len(cfg.class_names), self.norm, cfg.scales, cfg.crop, cfg.seed)
        return stream_loader(dataset, cfg.batch, cfg.seed, start, self.iters, resolve_workers(cfg.workers, self.device),
                             self.device)  # fmt: skip

    def schedule(self, iteration: int) -> dict[str, Any]:
        lr = cosine_lr(self.cfg.lr, iteration, self.iters)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["image"].to(self.device, non_blocking=True)
        rgb = batch["rgb"].to(self.device, non_blocking=True)
        y = batch["labels"].to(self.device)
        cams = self.model(images).float()
        sims = self.evaluator.similarities(rgb, cams, y)
        return clims_loss(sims, cams, y, self.evaluator.bg_valid, self.cfg.options())

    def oom_hint(self) -> str:
        return f"--batch {self.cfg.batch} --crop {self.cfg.crop}"

    def model_config(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "arch": self.cfg.arch,
            "style": self.model.backbone.style,
            "num_classes": len(self.cfg.class_names),
            "normalization": self.norm.to_dict(),
            "options": self.cfg.options(),
            "bg_prompts": self.bg_prompts,
            "object_template": OBJECT_TEMPLATE,
            "clip_weights": clip_weights_record(self.weights),
        }

    def summary_extra(self) -> dict[str, Any]:
        return {"init": self.init_note, "images": len(self.keys)}

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> ClimsPredictor:
        """``wsss-label predict`` on a ``cam.clims`` checkpoint (CLIP is needed only for ``--caa``)."""
        cfg = ckpt["model_config"]
        try:
            net = CAMNet(ARCHS[cfg["arch"]], int(cfg["num_classes"]), cfg.get("style", "pytorch"))
            net.load_state_dict(ckpt["model"], strict=True)
            norm = Normalization.from_dict(cfg["normalization"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise model_mismatch(exc) from None
        threshold = getattr(options, "bg_threshold", None)
        if threshold is None:
            threshold = float(cfg.get("options", {}).get("bg_threshold", OPTIONS["bg_threshold"]))
        labels = saved_image_labels(ckpt.get("image_labels"))
        clip, lam = None, None
        if getattr(options, "caa", False):  # predict --caa: CAA on the CLIP the run was trained with
            clip, _ = checkpoint_clip(ckpt, device)
            lam = float(getattr(options, "caa_lam", None) or CAA_LAMBDA)
        return ClimsPredictor(net, norm, list(ckpt["class_names"]), device, options, threshold, labels, clip, lam)


# -- prediction ----------------------------------------------------------------------------------
class ClimsPredictor:
    """A trained CAM network as a :class:`clipseg_cli.inference.Predictor`."""

    def __init__(self, net: CAMNet, norm: Normalization, class_names: list[str], device: torch.device,
                 options: InferenceOptions, bg_threshold: float, labels: ImageLabels,
                 clip: CLIP | None = None, caa_lam: float | None = None) -> None:  # fmt: skip
        self.net = net.to(device).eval()
        self.clip, self.caa_lam = clip, (caa_lam if clip is not None else None)
        self.norm, self.class_names, self.device, self.options = norm, class_names, device, options
        self.bg_threshold = float(bg_threshold)
        self.labels = labels

    def image_labels(self, key: str) -> list[int] | None:
        return self.labels.get(key)

    @torch.no_grad()
    def cams(self, image: np.ndarray) -> np.ndarray:
        """(K, H, W) sigmoid maps averaged over the test scales (and flips), each divided by its max."""
        height, width = image.shape[:2]
        x = torch.from_numpy(self.norm.apply(image)).unsqueeze(0).to(self.device)
        total, count = None, 0
        for s in self.options.scales:
            xs = x
            if s != 1.0:
                size = (max(16, round(height * s)), max(16, round(width * s)))
                xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            batch = torch.cat([xs, xs.flip(-1)]) if self.options.flip else xs
            maps = self.net(batch)
            if self.options.flip:
                maps = torch.stack([maps[0], maps[1].flip(-1)])
            up = F.interpolate(maps, size=(height, width), mode="bilinear", align_corners=False).sum(0)
            total = up if total is None else total + up
            count += maps.shape[0]
        assert total is not None
        cams = total / count
        cams = cams / cams.flatten(1).amax(dim=1).clamp(min=1e-5).view(-1, 1, 1)
        return cams.float().cpu().numpy()

    @torch.no_grad()
    def caa(self, image: np.ndarray, cams: np.ndarray) -> np.ndarray:
        """CLIP-ES's CAA on our CAMs: the frozen CLIP's attention of the same image (all blocks'
        average of the last 8, Sinkhorn, boxes at ``caa_lam``) propagates the maps on the patch grid;
        back at full size, min-max normalised per class."""
        from clipseg_cli.cam.caa import affinity_from_attention, refine_cams
        from clipseg_cli.cam.gradcam import run_frozen_blocks
        from clipseg_cli.cam.preprocess import to_clip_tensor

        assert self.clip is not None and self.caa_lam is not None
        visual = self.clip.visual
        tensor = to_clip_tensor(image, visual.patch_size).to(self.device)
        frozen = run_frozen_blocks(visual, tensor)
        _, last = visual.blocks[-1](frozen.tokens, need_weights=True)
        affinity = affinity_from_attention((frozen.attention_sum[0] + last[0].float()) / (frozen.attention_count + 1))
        height, width = image.shape[:2]
        grid = F.interpolate(torch.from_numpy(cams)[None], size=frozen.grid, mode="area")[0].numpy()
        refined = refine_cams(affinity, grid, self.caa_lam)
        up = F.interpolate(torch.from_numpy(refined)[None], size=(height, width), mode="bilinear", align_corners=False)
        return up[0].clamp(0, 1).numpy()

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        cams = self.cams(image)
        k, height, width = cams.shape
        values = list(range(1, k + 1)) if labels is None else [int(v) for v in labels if 1 <= int(v) <= k]
        probs = np.zeros((k + 1, height, width), np.float32)
        probs[0] = self.bg_threshold
        if values and self.caa_lam is not None:
            refined = self.caa(image, np.ascontiguousarray(cams[[v - 1 for v in values]]))
            for v, cam in zip(values, refined):
                probs[v] = cam
        else:
            for v in values:
                probs[v] = cams[v - 1]
        return probs / probs.sum(axis=0, keepdims=True).clip(min=1e-8)
