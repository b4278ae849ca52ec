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
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clipseg_cli import __version__
from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
from clipseg_cli.cam_generators import generator_kind
from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.io.atomic import remove_stale_parts, write_json
from clipseg_cli.segmentation.augment import train_augment
from clipseg_cli.segmentation.checkpoint import (
    make_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipseg_cli.segmentation.dataset import TrainBatches, list_images, read_rgb
from clipseg_cli.segmentation.deeplab import IMAGENET_NORM, Normalization
from clipseg_cli.segmentation.predict import InferenceOptions
from clipseg_cli.segmentation.resnet import ResNet
from clipseg_cli.segmentation.schedule import set_lr
from clipseg_cli.segmentation.train import (
    CURVE,
    LAST,
    METRICS,
    RUN,
    QuietReporter,
    Reporter,
    RunState,
    out_of_memory_message,
    peak_memory,
    seed_everything,
    truncate_jsonl,
    worker_init,
    write_loss_curve,
)

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP, VisionTransformer
    from clipseg_cli.clip.pretrained import ResolvedWeights
    from clipseg_cli.data.labels import LabelIndex

METHOD = "clims"
KIND = generator_kind(METHOD)
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

ImageLabels = dict[str, list[int]]


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
            s_ob = s_ob.index_put((bi, ki), torch.einsum("pd,pld->pl", v_io, self.text_bg[ki]))
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
class ClimsDataset(Dataset):
    """Augmented crops of labelled images, indexed by ``(dataset index, sample number)`` (the
    retrain stream: a pure function of (seed, sample)). Items: ``image`` (network input),
    ``rgb`` (3, crop, crop) float in 0..1 (padding black), ``labels`` (K,) float, ``error``."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[Sequence[int]], num_classes: int, norm: Normalization,
                 scales: Sequence[float], crop: int, seed: int) -> None:  # fmt: skip
        self.paths, self.norm, self.scales, self.crop, self.seed = list(paths), norm, tuple(scales), crop, seed
        self.vectors = []
        for values in labels:
            vec = torch.zeros(num_classes)
            vec[[v - 1 for v in values]] = 1.0
            self.vectors.append(vec)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, object]:
        index, g = item
        rng = np.random.default_rng([self.seed, g])
        try:
            image, error = read_rgb(self.paths[index]), ""
        except ImageError as exc:
            image, error = np.zeros((self.crop, self.crop, 3), np.uint8), str(exc)
        valid = np.ones(image.shape[:2], np.uint8)
        image, valid = train_augment(image, valid, rng, self.scales, self.crop, self.norm.mean_rgb)
        rgb = np.where((valid == 1)[..., None], image, 0.0).astype(np.float32) / 255.0
        return {
            "image": torch.from_numpy(self.norm.apply(image)),
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "labels": self.vectors[index],
            "error": error,
        }


def labelled_images(index: LabelIndex, images: Path, class_names: Sequence[str]) -> ImageLabels:
    from clipseg_cli.refiners.base import labels_for_images

    return labels_for_images(index, images, class_names)


# -- training ------------------------------------------------------------------------------------
@dataclass
class ClimsConfig:
    images: Path
    out: Path
    class_names: list[str]
    arch: str = "resnet50"
    init: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    iters: int = 6615  # 10 epochs of VOC train_aug (10,582 images) at batch 16
    batch: int = 16
    crop: int = 512
    scales: tuple[float, ...] = (0.7, 0.85, 1.0, 1.15, 1.3)
    lr: float = 2.5e-4
    seed: int = 0
    save_every: int = 500
    workers: int = 0

    DEFINING = ("class_names", "arch", "iters", "batch", "crop", "scales", "lr", "seed")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def flat(self) -> dict[str, Any]:
        d = self.to_json()
        return {**d, **d["options"]}

    def apply_saved(self, saved: Mapping[str, Any]) -> None:
        self.class_names = list(saved["class_names"])
        self.arch = str(saved["arch"])
        self.init = Path(saved["init"]) if saved.get("init") else None
        self.options = dict(saved["options"])
        self.iters, self.batch, self.crop = int(saved["iters"]), int(saved["batch"]), int(saved["crop"])
        self.scales = tuple(float(s) for s in saved["scales"])
        self.lr, self.seed = float(saved["lr"]), int(saved["seed"])


def cosine_lr(base_lr: float, iteration: int, iters: int) -> float:
    """Cosine annealing from ``base_lr`` to 0 over ``iters``."""
    frac = min(max(iteration, 0), iters) / max(iters, 1)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def load_clims_resume(out: Path) -> dict[str, Any] | None:
    last = Path(out) / LAST
    if not last.exists():
        return None
    ckpt = read_checkpoint(last, "--resume")
    if ckpt.get("kind") != KIND or "optimizer" not in ckpt or "train_config" not in ckpt:
        raise ConfigError(f"--resume: {last} is not a training checkpoint of train-cam clims")
    return ckpt


class ClimsTrainer:
    """One run of ``train-cam clims``; ``labels`` None on --resume means the run's saved labels."""

    def __init__(self, cfg: ClimsConfig, clip: CLIP, weights: ResolvedWeights, device: torch.device,
                 labels: LabelIndex | None, *, resume: bool = False, reporter: Reporter | None = None) -> None:  # fmt: skip
        from clipseg_cli.refiners.base import check_clip_weights

        self.cfg, self.device, self.weights = cfg, device, weights
        self.reporter = reporter or QuietReporter()
        self.state = RunState()
        out = cfg.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        ckpt = None
        if (out / LAST).exists():
            if not resume:
                raise ConfigError(f"{out} already holds a training run ({LAST}); pass --resume or choose another --out")
            ckpt = load_clims_resume(out)
            assert ckpt is not None
            cfg.apply_saved(ckpt["train_config"])
            check_clip_weights(ckpt["model_config"], weights, f"the run in {out}")
        elif resume:
            self.reporter.message(f"nothing to resume in {out}: starting a new run")
        if cfg.crop < 32:
            raise ConfigError(f"--crop must be at least 32, got {cfg.crop}")
        unknown = sorted(set(cfg.options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not a setting of clims")
        cfg.options = {**OPTIONS, **cfg.options}
        if labels is None:
            if ckpt is None:
                raise ConfigError("give --labels FILE or --annotations DIR")
            self.image_labels: ImageLabels = {k: list(v) for k, v in ckpt.get("image_labels", {}).items()}
        else:
            self.image_labels = labelled_images(labels, cfg.images, cfg.class_names)
        found = list_images(cfg.images)
        self.keys = [k for k in found if k in self.image_labels]
        if not self.keys:
            raise ConfigError(f"no image in {cfg.images} has labels")
        self.paths = [found[k] for k in self.keys]
        self.bg_prompts = background_prompts(cfg.class_names)
        seed_everything(cfg.seed)
        self.net, self.norm, self.init_note = build_camnet(cfg.arch, len(cfg.class_names), cfg.init if ckpt is None else None)
        if ckpt is not None:
            self.norm = Normalization.from_dict(ckpt["model_config"]["normalization"])
            self.net = CAMNet(ARCHS[cfg.arch], len(cfg.class_names), ckpt["model_config"].get("style", "pytorch"))
            self.net.load_state_dict(ckpt["model"], strict=True)
            self.init_note = f"resumed from {LAST} (iteration {int(ckpt['iteration'])})"
        self.net.to(device)
        self.evaluator = ClimsEvaluator(clip, cfg.class_names, self.bg_prompts, int(cfg.options["clip_size"])).to(device)
        self.optimizer = self._optimizer()
        if ckpt is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"])
            self.state.iteration = int(ckpt["iteration"])
            self.state.seconds = float(ckpt.get("seconds", 0.0))
            self.state.last_saved = self.state.iteration
            self.reporter.message(f"resuming {out} at iteration {self.state.iteration} of {cfg.iters}")
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(out)
        truncate_jsonl(out / METRICS, self.state.iteration)

    def _optimizer(self) -> torch.optim.SGD:
        groups = [
            {"params": list(self.net.backbone.parameters()), "lr_mult": 1.0},
            {"params": list(self.net.classifier.parameters()), "lr_mult": HEAD_LR_MULT},
        ]
        for g in groups:
            g["lr"] = self.cfg.lr * g["lr_mult"]
        return torch.optim.SGD(groups, lr=self.cfg.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def model_config(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "arch": self.cfg.arch,
            "style": self.net.backbone.style,
            "num_classes": len(self.cfg.class_names),
            "normalization": self.norm.to_dict(),
            "options": dict(self.cfg.options),
            "bg_prompts": self.bg_prompts,
            "object_template": OBJECT_TEMPLATE,
            "clip_weights": {"path": str(Path(self.weights.path).resolve()), "sha256": self.weights.sha256},
        }

    def save(self) -> None:
        st, cfg = self.state, self.cfg
        save_checkpoint(
            cfg.out / LAST,
            make_checkpoint(
                KIND, self.model_config(), cfg.class_names, self.net.state_dict(),
                iteration=st.iteration, max_iter=cfg.iters,
                image_labels={k: self.image_labels[k] for k in self.keys},
                optimizer=self.optimizer.state_dict(), rng=rng_state(), train_config=cfg.to_json(),
                seconds=st.seconds,
            ),
        )  # fmt: skip
        st.last_saved = st.iteration
        self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        ran = st.iteration - st.session_start_iter
        summary = {
            "command": "train-cam clims",
            "wsss_label": __version__,
            "torch": torch.__version__,
            "status": st.status,
            "kind": KIND,
            "model_config": self.model_config(),
            "init": self.init_note,
            "config": cfg.to_json(),
            "images": len(self.keys),
            "device": str(self.device),
            "iteration": st.iteration,
            "max_iter": cfg.iters,
            "seconds": round(st.seconds, 3),
            "this_session": {
                "iterations": ran,
                "seconds": round(st.session_seconds, 3),
                "seconds_per_iteration": round(st.session_seconds / ran, 4) if ran else None,
            },
            "final_loss": round(float(np.mean(st.losses[-20:])), 6) if st.losses else None,
            "final_loss_parts": {k: round(v, 6) for k, v in getattr(self, "_parts", {}).items()},
            "peak_memory": peak_memory(self.device),
            "files": {"last": LAST, "metrics": METRICS, "curve": CURVE},
        }
        write_json(cfg.out / RUN, summary)
        return summary

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        dataset = ClimsDataset(
            self.paths, [self.image_labels[k] for k in self.keys], len(cfg.class_names), self.norm, cfg.scales,
            cfg.crop, cfg.seed,
        )  # fmt: skip
        sampler = TrainBatches(len(self.paths), cfg.batch, cfg.seed, self.state.iteration, cfg.iters)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=worker_init if cfg.workers > 0 else None)  # fmt: skip

    def step(self, batch: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        images = batch["image"].to(self.device, non_blocking=True)
        rgb = batch["rgb"].to(self.device, non_blocking=True)
        y = batch["labels"].to(self.device)
        cams = self.net(images)
        sims = self.evaluator.similarities(rgb, cams, y)
        loss, parts = clims_loss(sims, cams, y, self.evaluator.bg_valid, self.cfg.options)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value, parts

    def run(self) -> dict[str, Any]:
        """Train to ``--iters``; Ctrl-C saves last.pt, then re-raises."""
        cfg, st = self.cfg, self.state
        st.session_start_iter = st.iteration
        self.reporter.start(st.iteration, cfg.iters)
        self.net.train()
        started, base_seconds, diverged = time.perf_counter(), st.seconds, False
        try:
            with open(cfg.out / METRICS, "a") as metrics:
                for batch in self._loader():
                    errors = [e for e in batch["error"] if e]
                    if errors:
                        raise ConfigError(errors[0])
                    lr = cosine_lr(cfg.lr, st.iteration, cfg.iters)
                    set_lr(self.optimizer, lr)
                    try:
                        value, parts = self.step(batch)
                    except FloatingPointError as exc:
                        diverged = True
                        raise ConfigError(f"the loss became {exc} at iteration {st.iteration + 1}; lower --lr") from None
                    st.iteration += 1
                    st.session_seconds = time.perf_counter() - started
                    st.seconds = base_seconds + st.session_seconds
                    st.losses.append(value)
                    self._parts = parts
                    row = {"iteration": st.iteration, "loss": value, **parts, "lr": lr, "seconds": round(st.seconds, 3)}
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    ran = st.iteration - st.session_start_iter
                    self.reporter.step(st.iteration, value, lr, ran / max(st.session_seconds, 1e-9))
                    if st.iteration % cfg.save_every == 0 or st.iteration == cfg.iters:
                        if st.iteration == cfg.iters:
                            st.status = "finished"
                        self.save()
        except (KeyboardInterrupt, ConfigError) as exc:
            st.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if st.iteration > st.last_saved and not diverged:
                self.save()
                self.reporter.message(f"saved {cfg.out / LAST} at iteration {st.iteration}; rerun with --resume to continue")
            write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
            raise
        except RuntimeError as exc:
            message = out_of_memory_message(exc, self.device)
            if message is None:
                raise
            raise ConfigError(f"{message} at --batch {cfg.batch} --crop {cfg.crop}; lower them") from None
        if st.last_saved != st.iteration:
            self.save()
        st.status = "finished"
        write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
        return self.write_summary()


# -- prediction ----------------------------------------------------------------------------------
class ClimsPredictor:
    """A trained CAM network as a :class:`clipseg_cli.segmentation.predict.Predictor`."""

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
        affinity = affinity_from_attention((frozen.attention_sum + last[0].float()) / (frozen.attention_count + 1))
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


def load_predictor(ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> ClimsPredictor:
    """``wsss-label predict`` on a ``cam.clims`` checkpoint (CLIP is not needed to predict)."""
    cfg = ckpt["model_config"]
    try:
        net = CAMNet(ARCHS[cfg["arch"]], int(cfg["num_classes"]), cfg.get("style", "pytorch"))
        net.load_state_dict(ckpt["model"], strict=True)
        norm = Normalization.from_dict(cfg["normalization"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(f"checkpoint does not match its model_config ({str(exc).splitlines()[0][:160]})") from None
    threshold = getattr(options, "bg_threshold", None)
    if threshold is None:
        threshold = float(cfg.get("options", {}).get("bg_threshold", OPTIONS["bg_threshold"]))
    labels = {str(k): [int(v) for v in vals] for k, vals in (ckpt.get("image_labels") or {}).items()}
    clip, lam = None, None
    if getattr(options, "caa", False):  # predict --caa: CAA on the CLIP the run was trained with
        from clipseg_cli.clip.loading import load_clip
        from clipseg_cli.clip.pretrained import resolve_weights
        from clipseg_cli.refiners.base import check_clip_weights, recorded_weights

        resolved = resolve_weights(recorded_weights(cfg))
        check_clip_weights(cfg, resolved, "the checkpoint")
        clip = load_clip(resolved.path, device)
        lam = float(getattr(options, "caa_lam", None) or CAA_LAMBDA)
    return ClimsPredictor(net, norm, list(ckpt["class_names"]), device, options, threshold, labels, clip, lam)
