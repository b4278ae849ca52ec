"""CLIMS (Xie et al., CVPR 2022, section 3) as a learned CAM generator: ``wsss-label train-cam clims``.

- CAM network (eq. 3): the network of ``train-cam cam`` (:class:`clipseg_cli.methods.cam.ResNetCAM`:
  ResNet, output stride 16, bias-free 1x1 convolution to K maps, frozen BatchNorm statistics) with
  a sigmoid and no pooling. Like the authors, a run starts from a trained CAM network: ``--init
  RUN/last.pt`` of ``train-cam cam`` loads backbone and classifier (a ResNet file: backbone only).
- Text-driven evaluator: a frozen CLIP with a ViT image tower (``--weights``: any ViT; the authors used
  ViT-B/32, the default here is the main command's ViT-B/16; never trained, no gradient to its
  weights, but gradients flow *through* it to the CAM). For every labelled class k of an image,
  ``X * P_k`` and ``X * (1 - P_k)`` (pixels in 0..1, both resized to CLIP's input) are encoded with
  CLIP's standard class-token image embedding (ln_post(cls) @ proj; not CLIP-ES's avg-token one);
  text ``a photo of {}.`` per class; the class-related background words of CBS are the paper's
  (section 4.3: boat and train; ``prompts/clims-background.json``) or ``--background-prompts FILE``.
- Losses, eqs. 6-12, on cosine similarities clamped to [1e-4, 1 - 1e-4] before the log (as the
  authors' code; a cosine can be <= 0):
  OTM = -sum_k y_k log s_k^oo, BTM = -sum_k y_k log(1 - s_k^bo),
  CBS = -sum_k sum_l y_k log(1 - s_kl^ob), REG = 1/K sum_k mean_hw P_k,
  total = alpha OTM + beta BTM + gamma CBS + delta REG (10, 25, 29.5, 1.15).
  ``reduction="mean"`` (default) reduces as the authors' code that those weights were tuned with:
  OTM and BTM averaged over the batch's labelled (image, class) pairs (``.mean()``), CBS averaged
  over each pair's background prompts and *summed* over the pairs (their loop); ``reduction="sum"``
  is the equations literally, averaged over the images of the batch. REG is averaged over the batch
  either way.
- Training: random rescale, pad/crop, flip (retrain's deterministic stream); SGD (momentum 0.9,
  weight decay 1e-4; the 1x1 head at 10x lr), cosine schedule from --lr to 0 (the paper's words).
- Prediction: IRN's ``make_cam`` (:class:`clipseg_cli.methods.cam.CamPredictor`) on the ReLU of the
  class maps (not the sigmoid), as the authors' ``make_clims``; the image's classes only; background
  = a constant threshold (``bg_threshold``). Optionally
  (``options.caa``, when ``wsss-label predict`` passes it) the maps are refined by CLIP-ES's CAA on
  the frozen CLIP's attention of the same image (:meth:`ClimsPredictor.caa`).
- The paper's 70.5 mIoU is after a random-walk refinement (PSA/IRN) of these CAMs, which is not
  part of this project; its CAMs alone score 56.6.
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
from clipseg_cli.methods.base import CamMethod, checkpoint_clip, clip_weights_record, weights_setting
from clipseg_cli.methods.cam import ARCHS, CamPredictor, ResNetCAM, load_backbone_init, rebuild, sgd
from clipseg_cli.methods.cam import KIND as CAM_KIND
from clipseg_cli.segmentation.augment import train_augment
from clipseg_cli.segmentation.deeplab import IMAGENET_NORM, Normalization
from clipseg_cli.segmentation.init_weights import read_init
from clipseg_cli.training.config import RunConfig, setting
from clipseg_cli.training.data import LabelledImages, seed_everything
from clipseg_cli.training.run import LAST
from clipseg_cli.training.schedules import cosine_lr, set_lr

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP, VisionTransformer

METHOD = "clims"
KIND = "cam.clims"
OBJECT_TEMPLATE = "a photo of {}."
BACKGROUND_FILE = "clims-background.json"
SIM_CLAMP = (1e-4, 1.0 - 1e-4)
MOMENTUM = 0.9
CAA_LAMBDA = 0.4  # box threshold of CAA (CLIP-ES's VOC setting)

# Loss weights and evaluator settings (all `train-cam clims` options); saved in the checkpoint.
OPTIONS: dict[str, Any] = {
    "alpha": 10.0,  # OTM
    "beta": 25.0,  # BTM
    "gamma": 29.5,  # CBS
    "delta": 1.15,  # REG
    "reduction": "mean",  # "mean": the authors' code's reductions; "sum": eqs. 6, 8, 10 literally (per image)
    "clip_size": 0,  # CLIP input side; 0: the checkpoint's image_resolution (224 for ViT-B/16)
    "bg_threshold": 0.15,  # predict: background score against max-normalised CAMs
}


# -- data files ----------------------------------------------------------------------------------
def read_background_file(path: Path | None = None) -> dict[str, list[str]]:
    """Class -> background words: ``prompts/clims-background.json`` (the paper's lists, section 4.3),
    or a user's JSON file (``{"class": ["word", ...]}``, optionally under ``"classes"``)."""
    if path is None:
        text = resources.files("clipseg_cli.prompts").joinpath(BACKGROUND_FILE).read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--background-prompts {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--background-prompts {path}: not JSON ({exc.msg} at line {exc.lineno})") from None
    table = data.get("classes", data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(
        isinstance(v, list) and all(isinstance(w, str) and w.strip() for w in v) for v in table.values()
    ):
        raise ConfigError(f'--background-prompts {path}: expected {{"class": ["background word", ...], ...}}')
    return {" ".join(str(k).lower().split()): [w.strip() for w in v] for k, v in table.items()}


def background_prompts(class_names: Sequence[str], path: Path | None = None) -> list[list[str]]:
    """Class-related background words per class (a class without any gets no CBS term). Default: the
    paper's (boat: river, sea, lake; train: railroad, railway, tree); ``path``: the user's file,
    whose classes must all be among ``class_names``."""
    table = read_background_file(path)
    keys = [" ".join(n.lower().split()) for n in class_names]
    unknown = [k for k in table if k not in keys]
    if path is not None and unknown:
        raise ConfigError(f"--background-prompts {path}: {unknown[0]!r} is not one of the classes ({', '.join(class_names)})")
    return [list(table.get(k, [])) for k in keys]


# -- the CAM network (eq. 3) -----------------------------------------------------------------------
class CAMNet(ResNetCAM):
    """The CAM network of ``train-cam cam`` (same weights) with sigmoid maps: (B, 3, H, W) ->
    (B, K, H/16, W/16); a fresh classifier starts Xavier-uniform."""

    def __init__(self, depth: int, num_classes: int, style: str = "pytorch", frozen_stages: int = 0) -> None:
        super().__init__(depth, num_classes, style, frozen_stages)
        nn.init.xavier_uniform_(self.classifier.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.class_maps(x))


def build_camnet(arch: str, class_names: Sequence[str], init: Path | None = None) -> tuple[CAMNet, Normalization, str]:
    """A CAM network of ``arch`` for ``class_names``: from a ``train-cam cam`` checkpoint (backbone and
    classifier, as the authors start), a ResNet file (backbone only: torchvision or deeplab-pytorch
    layout), or random weights."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if init is None:
        return CAMNet(ARCHS[arch], len(class_names)), IMAGENET_NORM, "random init"
    from clipseg_cli.training.checkpoint import load_torch_file

    obj = load_torch_file(Path(init), "--init")
    if isinstance(obj, Mapping) and obj.get("kind") == CAM_KIND:
        return cam_checkpoint_init(obj, Path(init), arch, class_names)
    if isinstance(obj, Mapping) and "kind" in obj:
        raise ConfigError(
            f"--init {init}: a {obj['kind']!r} checkpoint; CLIMS starts from a `train-cam cam` run's last.pt or a ResNet file"
        )
    w = read_init(init, obj)
    net = CAMNet(ARCHS[arch], len(class_names), w.style)
    return net, w.norm, load_backbone_init(net, w, arch)


def cam_checkpoint_init(ckpt: Mapping[str, Any], path: Path, arch: str, class_names: Sequence[str]) -> tuple[CAMNet, Normalization, str]:
    """The whole CAM network (backbone and classifier) of a ``train-cam cam`` checkpoint."""
    cfg = ckpt.get("model_config", {})
    if cfg.get("arch") != arch:
        raise ConfigError(f"--init {path} holds a {cfg.get('arch')} CAM network but --arch is {arch}; pass --arch {cfg.get('arch')}")
    trained = [str(c) for c in ckpt.get("class_names", [])]
    if [c.lower() for c in trained] != [c.lower() for c in class_names]:
        raise ConfigError(f"--init {path} was trained on the classes {', '.join(trained)}, not on --classes {', '.join(class_names)}")
    net, norm, _ = rebuild(ckpt, CAMNet)
    return net, norm, f"the CAM network (backbone and classifier) of {path.name} (train-cam cam, iteration {int(ckpt.get('iteration', 0))})"


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
    """Eq. 10: -sum_k sum_l y_k log(1 - s_kl^ob), over each class's own L_k background prompts
    (``valid`` (K, L) marks them). ``mean``: as the authors' code, the mean over a class's prompts,
    summed over the batch's labelled (image, class) pairs (not divided by their number); ``sum``:
    the equation, summed over prompts, averaged over the images."""
    w = y.to(s_ob.dtype).unsqueeze(-1) * valid.to(s_ob.dtype).unsqueeze(0)
    if reduction == "mean":
        w = w / valid.to(s_ob.dtype).sum(dim=1).clamp(min=1).view(1, -1, 1)
        return -(w * _log(1.0 - s_ob)).sum()
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
    init: Path | None = setting(None, "Start: RUN/last.pt of `train-cam cam` (backbone and classifier, as the authors), or a "
                                "torchvision-layout ResNet file (backbone only, e.g. resnet50-*.pth); default random.",
                                defining=False, metavar="FILE")  # fmt: skip
    weights: Path | None = weights_setting(
        "Frozen CLIP evaluator: any CLIP checkpoint with a ViT image tower in OpenAI's layout (the authors used ViT-B/32; "
        "default: as the main command, $WSSS_LABEL_WEIGHTS, else the cached ViT-B-16.pt)."
    )
    background_prompts: Path | None = setting(None, 'Background words of L_CBS per class, JSON {"class": ["word", ...]} '
                                              "(default: the paper's, boat and train only).", metavar="FILE")  # fmt: skip
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
    reduction: str = setting(OPTIONS["reduction"], "mean: as the authors' code (OTM, BTM averaged over the labelled "
                             "(image, class) pairs; CBS averaged over a class's prompts, summed over the pairs); "
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
        self.iters = cfg.iters
        seed_everything(cfg.seed)
        if ckpt is not None:
            self.bg_prompts = [list(p) for p in ckpt["model_config"]["bg_prompts"]]
            self.model, self.norm, _ = rebuild(ckpt, CAMNet)
            self.init_note = f"resumed from {LAST} (iteration {int(ckpt['iteration'])})"
        else:
            self.bg_prompts = background_prompts(cfg.class_names, cfg.background_prompts)
            self.model, self.norm, self.init_note = build_camnet(cfg.arch, cfg.class_names, cfg.init)
        self.model.to(self.device)
        self.evaluator = ClimsEvaluator(self.clip, cfg.class_names, self.bg_prompts, int(cfg.clip_size)).to(self.device)
        self.optimizer = sgd(self.model, cfg.lr, momentum=MOMENTUM)

    def describe(self) -> str:
        return (f"clims {self.cfg.arch} on {self.device}: {len(self.keys)} labelled images, "
                f"{len(self.cfg.class_names)} classes, frozen CLIP {Path(self.weights.path).name}; init: {self.init_note}")  # fmt: skip

    def batches(self, start: int) -> Iterable[Any]:
        cfg = self.cfg
        dataset = ClimsDataset(self.paths, self.key_labels, len(cfg.class_names), self.norm, cfg.scales, cfg.crop, cfg.seed)
        return self.stream(dataset, start)

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
        return f"--batch-size {self.cfg.batch} --crop {self.cfg.crop}"

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
        net, norm, cfg = rebuild(ckpt, CAMNet)
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
class ClimsPredictor(CamPredictor):
    """A trained CLIMS network as a :class:`clipseg_cli.inference.Predictor` (IRN's ``make_cam`` on the
    ReLU of its class maps, :class:`clipseg_cli.methods.cam.CamPredictor`), optionally refined by CAA."""

    def __init__(self, net: CAMNet, norm: Normalization, class_names: list[str], device: torch.device,
                 options: InferenceOptions, bg_threshold: float, labels: ImageLabels,
                 clip: CLIP | None = None, caa_lam: float | None = None) -> None:  # fmt: skip
        super().__init__(net, norm, class_names, device, options, bg_threshold, labels)
        self.clip, self.caa_lam = clip, (caa_lam if clip is not None else None)

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

    def class_probabilities(self, image: np.ndarray, cams: np.ndarray, values: list[int]) -> np.ndarray:
        selected = np.ascontiguousarray(cams[[v - 1 for v in values]])
        return selected if self.caa_lam is None else self.caa(image, selected)
