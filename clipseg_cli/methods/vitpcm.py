"""ViT-PCM (Rossetti et al., ECCV 2022): patch-class mapping as a learned CAM generator.

Network (:class:`PatchClassMapper`): a ViT (:mod:`clipseg_cli.methods.vit_backbone`: our
CLIP image tower or a timm-layout ImageNet ViT) gives the final-normed patch tokens of its last block
(class token ignored); an HV-BiLSTM (bidirectional LSTMs over the rows and over the columns of the
patch grid, outputs concatenated) conditions them; a linear patch classifier to K+1 classes
(channel 0 background) with a softmax per patch gives the baseline pseudo mask; global max pooling
per class gives the image scores.

Training (:class:`VitPcm`, image-level labels only): ``L = L_MCE + L_ET + l2 |W|^2``
(eqs. 1, 8, 9; W the classifier weights, no bias). Training images are resized and colour-jittered
(section 6.1). The main branch sees each image flipped / rotated by 90 degrees at random (a); the
second warps the batch with a random affine transform (b: translate, rotate, scale), halves it and
tiles groups of four into 2x2 mosaics of the input size (m); eq. 8 is the cross-entropy between the
two branches' inverse-transformed patch distributions, both branches trained
(:mod:`clipseg_cli.methods.vitpcm_equivariance`). Schedule: Adam, ``--frozen-epochs`` (2)
at ``--lr`` (1e-3) with the backbone frozen, then the last ``--unfreeze`` (4) blocks train too at
``--lr-finetune`` (1e-4).

The training engine (:mod:`clipseg_cli.training`) keeps the run folder: atomic ``last.pt`` (kind
``cam.vitpcm``, whole model, optimizer, RNG states), exact ``--resume``, ``metrics.jsonl``,
``loss.png``, ``run.json``. Prediction (:meth:`VitPcm.load_predictor`, for ``wsss-label predict``): the image scaled so the patch grid
is ``predict_size / patch`` (60x60 at 960 for /16), per-patch probabilities restricted to background
and the image's labels, upsampled nearest (= argmax per patch, then upsample), optional CRF after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
from clipseg_cli.data.labels import ImageLabels, saved_image_labels
from clipseg_cli.errors import ConfigError
from clipseg_cli.inference import InferenceOptions
from clipseg_cli.methods import register
from clipseg_cli.methods import vitpcm_equivariance as eqv
from clipseg_cli.methods.base import CamMethod, model_mismatch
from clipseg_cli.methods.vit_backbone import TimmViT, ViTConfig, build_backbone, patch_tokens, vit_width
from clipseg_cli.segmentation.deeplab import Normalization
from clipseg_cli.training.config import setting
from clipseg_cli.training.data import LabelledImages, seed_everything

KIND = "cam.vitpcm"
DEFAULT_EPOCHS = 10
CLIP_NORM = Normalization(tuple(255.0 * m for m in CLIP_MEAN), tuple(255.0 * s for s in CLIP_STD))  # type: ignore[arg-type]
TIMM_NORM = Normalization((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))  # timm's ViT-B/16 (augreg): mean = std = 0.5


# -- network -------------------------------------------------------------------------------------
class HVBiLSTM(nn.Module):
    """Bidirectional LSTMs along the rows (H) and the columns (V) of a patch grid, concatenated:
    (B, h, w, D) -> (B, h, w, 4 * hidden)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.rows = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 4 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        rows, _ = self.rows(x.reshape(b * h, w, d))
        cols, _ = self.cols(x.transpose(1, 2).reshape(b * w, h, d))
        rows = rows.reshape(b, h, w, -1)
        cols = cols.reshape(b, w, h, -1).transpose(1, 2)
        return torch.cat([rows, cols], dim=-1)


class PatchClassMapper(nn.Module):
    """ViT -> HV-BiLSTM -> linear patch classifier (K+1) -> per-patch softmax, (B, K+1, h, w)."""

    def __init__(self, backbone: nn.Module, num_classes: int, lstm_hidden: int = 256, bias: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        dim = vit_width(backbone)
        self.lstm = HVBiLSTM(dim, lstm_hidden)
        # eq. 2: A = F W, no bias (``bias`` only rebuilds checkpoints from before it was dropped).
        self.classifier = nn.Linear(self.lstm.out_dim, num_classes, bias=bias)
        # The paper starts W from a standard Gaussian; its std is 1/sqrt(fan-in) here (0.031 for the
        # 4 x 256 BiLSTM features; the authors' code uses 0.05): with std 1 the logits of those
        # features have a std of about 16 and the per-patch softmax starts saturated.
        nn.init.normal_(self.classifier.weight, std=self.lstm.out_dim**-0.5)
        if bias:
            nn.init.zeros_(self.classifier.bias)
        self.backbone_frozen = False

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_size)

    def set_trainable_blocks(self, count: int) -> list[nn.Parameter]:
        """Freeze the backbone except its last ``count`` blocks and final norm (0: all frozen);
        returns the backbone parameters that train."""
        self.backbone.requires_grad_(False)
        self.backbone_frozen = count <= 0
        if count <= 0:
            return []
        modules = list(self.backbone.blocks)[-count:] + [self.backbone.ln_post]
        for m in modules:
            m.requires_grad_(True)
        return [p for m in modules for p in m.parameters()]

    def finetune_parameters(self, count: int) -> list[nn.Parameter]:
        """The parameters :meth:`set_trainable_blocks` unfreezes, without changing anything."""
        if count <= 0:
            return []
        modules = list(self.backbone.blocks)[-count:] + [self.backbone.ln_post]
        return [p for m in modules for p in m.parameters()]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.lstm.parameters()) + list(self.classifier.parameters())

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        if self.backbone_frozen:
            with torch.no_grad():
                tokens, (h, w) = patch_tokens(self.backbone, image)
        else:
            tokens, (h, w) = patch_tokens(self.backbone, image)
        feats = self.lstm(tokens.reshape(tokens.shape[0], h, w, -1).float())
        return self.classifier(feats).permute(0, 3, 1, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised, sides multiples of the patch size -> (B, K+1, H/p, W/p) probabilities."""
        return self.logits(image).softmax(dim=1)


def describe_backbone(vit: nn.Module) -> dict[str, Any]:
    """What rebuilds the backbone's architecture (its weights travel in the checkpoint)."""
    if isinstance(vit, TimmViT):
        return {
            "type": "timm", "width": vit.width, "depth": len(vit.blocks), "heads": vit.blocks[0].attn.heads,
            "patch_size": vit.patch_size, "grid": round((vit.pos_embed.shape[1] - 1) ** 0.5),
        }  # fmt: skip
    width = int(vit.conv1.weight.shape[0])
    return {
        "type": "clip", "width": width, "depth": len(vit.blocks), "patch_size": int(vit.patch_size),
        "grid": round((vit.positional_embedding.shape[0] - 1) ** 0.5), "embed_dim": int(vit.proj.shape[1]),
    }  # fmt: skip


def rebuild_backbone(desc: Mapping[str, Any]) -> nn.Module:
    if desc["type"] == "timm":
        return TimmViT(
            int(desc["width"]),
            int(desc["depth"]),
            int(desc["heads"]),
            int(desc["patch_size"]),
            int(desc["grid"]),
        )
    if desc["type"] == "clip":
        from clipseg_cli.clip.model import CLIPConfig, VisionTransformer

        cfg = CLIPConfig(
            embed_dim=int(desc["embed_dim"]), image_resolution=int(desc["grid"]) * int(desc["patch_size"]),
            vision_layers=int(desc["depth"]), vision_width=int(desc["width"]), vision_patch_size=int(desc["patch_size"]),
            context_length=1, vocab_size=1, text_width=1, text_heads=1, text_layers=0,
        )  # fmt: skip
        return VisionTransformer(cfg)
    raise ConfigError(f"unknown backbone type {desc['type']!r} in the checkpoint")


def backbone_normalization(vit: nn.Module) -> Normalization:
    return TIMM_NORM if isinstance(vit, TimmViT) else CLIP_NORM


def build_model(model_config: Mapping[str, Any]) -> PatchClassMapper:
    return PatchClassMapper(
        rebuild_backbone(model_config["backbone"]),
        int(model_config["num_classes"]),
        int(model_config["lstm_hidden"]),
        bool(model_config.get("classifier_bias", True)),  # checkpoints before eq. 2's bias-free W had one
    )


# -- data ----------------------------------------------------------------------------------------
def colour_jitter(image: np.ndarray, rng: np.random.Generator, gray_p: float = 0.1) -> np.ndarray:
    """Section 6.1's colour jitter and random grayscale on an (H, W, 3) RGB image in 0..255, with the
    authors' code's magnitudes: brightness +-0.2, contrast x0.5-2 (about each channel's mean),
    saturation x0.5-1.5, hue +-0.1 of the circle, then grayscale (ITU-R 601 luma) with probability
    ``gray_p``. Returns float32 in 0..255."""
    x = image.astype(np.float32) / 255.0 + rng.uniform(-0.2, 0.2)
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = np.clip((x - mean) * rng.uniform(0.5, 2.0) + mean, 0.0, 1.0)
    hsv = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2HSV)  # H in degrees, S and V in 0..1
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0.0, 1.0)
    hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-0.1, 0.1)) % 360.0
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if rng.random() < gray_p:
        x = np.repeat(x @ np.array([0.2989, 0.5870, 0.1140], np.float32)[:, None], 3, axis=-1)
    return np.clip(x, 0.0, 1.0) * 255.0


class ResizedImages(LabelledImages):
    """Labelled images resized to ``size`` x ``size``, colour-jittered (``jitter``); items ``image``,
    ``target`` (background and the image's classes set) and ``error``. The flips and 90 degree
    rotations are the main branch's transform a, drawn in :func:`vitpcm_loss`."""

    target_key = "target"

    def __init__(self, paths: Sequence[Path], labels: Sequence[Sequence[int]], num_classes: int, norm: Normalization,
                 size: int, seed: int, jitter: bool = True) -> None:  # fmt: skip
        super().__init__(paths, labels, num_classes, seed, background=True, blank=size)
        self.norm, self.size, self.jitter = norm, size, jitter

    def make(self, image: np.ndarray, rng: np.random.Generator) -> dict[str, object]:
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        if self.jitter:
            image = colour_jitter(image, rng)
        return {"image": torch.from_numpy(self.norm.apply(image))}


# -- configuration and training ------------------------------------------------------------------
@dataclass(kw_only=True)
class VitPcmConfig(ViTConfig):
    """Everything ``train-cam vitpcm`` is asked for; the defining fields are kept on --resume."""

    size: int = setting(384, "Training images are resized to SIZE x SIZE (a multiple of twice the patch size).",
                        minimum=32)  # fmt: skip
    epochs: int | None = setting(None, "Training length in passes over the labelled images (this method's unit); default 10.", minimum=1)
    iters: int | None = setting(None, "Training iterations, instead of --epochs (the other training commands' unit).", minimum=1)
    batch: int = setting(8, "Images per training iteration. The mosaic branch groups them by 4.",
                         flags=("--batch-size",), minimum=1)  # fmt: skip
    frozen_epochs: int = setting(2, "First epochs with the backbone frozen, at --lr.", minimum=0)
    lr: float = setting(1e-3, "Adam learning rate while the backbone is frozen.", positive=True)
    lr_finetune: float = setting(1e-4, "Adam learning rate once the last blocks train.", positive=True)
    unfreeze: int = setting(4, "Last backbone blocks trained after --frozen-epochs (0: never).", minimum=0)
    lstm_hidden: int = setting(256, "Hidden units per direction of each BiLSTM.", minimum=1)
    l2: float = setting(0.1, "L2 regularisation of the patch classifier's weights.", minimum=0)
    et_weight: float = setting(1.0, "Weight of the equivariance loss (0: no second branch).", minimum=0)
    et_loss: str = setting("authors", "Equivariance loss: authors (their code: the main branch, restricted to the image's labels, "
                           "a fixed target for the second) | paper (eq. 8 as written: both branches trained).",
                           choices=("authors", "paper"))  # fmt: skip
    jitter: bool = setting(True, "Colour jitter and random grayscale of the training images (section 6.1).")
    predict_size: int = setting(960, "Side images are scaled to by predict (960: a 60x60 grid at /16).", minimum=32)
    save_every: int = setting(500, "Write last.pt every N iterations.", minimum=1, defining=False)

    def validate(self) -> None:
        super().validate()
        if self.iters is not None and self.epochs is not None:
            raise ConfigError("give --iters or --epochs, not both")


@register
class VitPcm(CamMethod):
    """One run of ``train-cam vitpcm``: the backbone of a fresh run is ``inputs.backbone`` when
    given, else built from ``--backbone``; on --resume the checkpoint holds it."""

    name = "vitpcm"
    kind = KIND
    summary = (
        "Train ViT-PCM (ECCV 2022) from image-level labels: ViT patch tokens -> HV-BiLSTM -> per-patch softmax "
        "over background + classes, global max pooling, multi-label BCE, equivariance to affine transforms and "
        "2x2 mosaics. Masks: `wsss-label predict IMAGES --checkpoint RUN/last.pt`."
    )
    Config = VitPcmConfig
    smoke_args = {"tiny": "--size 64 --batch-size 4 --lstm-hidden 8 --predict-size 64", "base": "--predict-size 384"}
    cfg: VitPcmConfig
    model: PatchClassMapper

    def setup(self, ckpt: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.load_labelled_images(ckpt)
        self.num_classes = len(cfg.class_names) + 1
        self.iters_per_epoch = math.ceil(len(self.keys) / cfg.batch)
        self.iters = cfg.iters if cfg.iters else (cfg.epochs or DEFAULT_EPOCHS) * self.iters_per_epoch
        self.frozen_iters = cfg.frozen_epochs * self.iters_per_epoch
        if ckpt is not None:
            self.model = build_model(ckpt["model_config"])
            try:
                self.model.load_state_dict(ckpt["model"])
            except RuntimeError as exc:
                raise ConfigError(f"--resume: checkpoint weights do not fit ({str(exc).splitlines()[0][:160]})") from None
        else:
            vit = self.inputs.backbone
            if vit is None:
                vit = build_backbone(cfg.backbone, cfg.weights, self.device, self.inputs.load_clip)
            seed_everything(cfg.seed)
            self.model = PatchClassMapper(vit, self.num_classes, cfg.lstm_hidden)
        multiple = 2 * self.model.patch_size
        if cfg.size % multiple:
            raise ConfigError(f"--size must be a multiple of {multiple} (twice the patch size) ; got {cfg.size}")
        self.norm = backbone_normalization(self.model.backbone)
        self.model.to(self.device)
        self.model.set_trainable_blocks(0)
        # Two groups from the start (head, last blocks); the second has lr 0 and no gradients while frozen.
        self.optimizer = torch.optim.Adam(
            [{"params": self.model.head_parameters()}, {"params": self.model.finetune_parameters(cfg.unfreeze)}],
            lr=cfg.lr,
        )

    def describe(self) -> str:
        return (f"vitpcm on {self.device}: {len(self.keys)} labelled images, {len(self.cfg.class_names)} classes, "
                f"{self.iters} iterations ({self.iters_per_epoch} per epoch, {self.frozen_iters} with the backbone "
                "frozen)")  # fmt: skip

    def batches(self, start: int) -> Iterable[Any]:
        cfg = self.cfg
        dataset = ResizedImages(self.paths, self.key_labels, len(cfg.class_names), self.norm, cfg.size, cfg.seed, cfg.jitter)
        return self.stream(dataset, start)

    def schedule(self, iteration: int) -> dict[str, Any]:
        """Frozen phase: the head at --lr; then the head and the last blocks at --lr-finetune."""
        cfg = self.cfg
        frozen = iteration < self.frozen_iters or cfg.unfreeze <= 0
        lr_head, lr_backbone = (cfg.lr, 0.0) if frozen else (cfg.lr_finetune, cfg.lr_finetune)
        self.model.set_trainable_blocks(0 if frozen else cfg.unfreeze)
        self.optimizer.param_groups[0]["lr"] = lr_head
        self.optimizer.param_groups[1]["lr"] = lr_backbone
        return {"lr": lr_head, "frozen": frozen}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        images = batch["image"].to(self.device, non_blocking=True)
        targets = batch["target"].to(self.device, non_blocking=True)
        return vitpcm_loss(self.model, images, targets, cfg.seed * 1_000_003 + iteration, cfg.l2, cfg.et_weight, cfg.et_loss)

    def oom_hint(self) -> str:
        return f"--batch-size {self.cfg.batch} --size {self.cfg.size}"

    def model_config(self) -> dict[str, Any]:
        return {
            "backbone": describe_backbone(self.model.backbone), "num_classes": self.num_classes,
            "lstm_hidden": self.cfg.lstm_hidden, "normalization": self.norm.to_dict(),
            "predict_size": self.cfg.predict_size, "backbone_source": self.cfg.backbone,
            "classifier_bias": self.model.classifier.bias is not None,
        }  # fmt: skip

    def summary_extra(self) -> dict[str, Any]:
        return {"images": len(self.keys), "iters_per_epoch": self.iters_per_epoch, "frozen_iters": self.frozen_iters}

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> VitPcmPredictor:
        """``wsss-label predict`` on a ``cam.vitpcm`` checkpoint: single scale at the run's
        ``predict_size`` (960 by default: a 60x60 grid for /16 patches), ``options.flip`` honoured,
        ``options.scales`` not used; the training images' labels for images without --labels."""
        return predictor_from_checkpoint(ckpt, device, options)


def vitpcm_loss(model: PatchClassMapper, images: torch.Tensor, targets: torch.Tensor, branch_seed: int,
                l2: float = 0.1, et_weight: float = 1.0, et_loss: str = "authors") -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Eq. 9 plus the classifier's L2: ``L_MCE + et_weight * L_ET + l2 |W|^2`` on a batch and its
    named parts. The main branch sees ``a(X)`` (a random flip / 90 degree rotation per image) and
    gives L_MCE (global max pooling does not see a) and mu = a^-1 f(a(X)); the second branch nu =
    c^-1 f(c(X)) with c = m(b(.)) (:func:`second_branch`). ``et_loss="paper"``: eq. 8 as written,
    -1/s sum nu log mu, both branches trained; ``"authors"``: their code's cross-entropy
    -1/s sum t log nu with t = mu restricted to the image's labels and held fixed
    (:func:`vitpcm_equivariance.label_target`). The transforms are drawn from ``branch_seed`` (the
    trainer uses (seed, iteration), so they repeat on --resume)."""
    gen = torch.Generator().manual_seed(branch_seed)
    flags = eqv.random_dihedral(images.shape[0], gen)
    probs = model(eqv.dihedral(images, flags))
    mce = eqv.mce_loss(probs, targets)
    reg = l2 * model.classifier.weight.pow(2).sum()
    loss = mce + reg
    parts = {"mce": float(mce.detach()), "l2": float(reg.detach())}
    if et_weight > 0:
        nu, valid = second_branch(model, images, gen)
        mu = eqv.undo_dihedral(probs, flags)
        if et_loss == "paper":
            et = eqv.equivariance_loss(nu, mu, valid)
        else:
            et = eqv.equivariance_loss(eqv.label_target(mu, targets), nu, valid)
        loss = loss + et_weight * et
        parts["et"] = float(et.detach())
    return loss, parts


def second_branch(model: PatchClassMapper, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The equivariance branch c = m(b(.)) and its inverse: warp (b: translate, rotate, scale), halve,
    2x2 mosaics (m) of the input size; the patch maps split back (m^-1), upsampled to the main grid
    and un-warped (b^-1). Returns (B, K+1, h, w) probabilities and the (B, 1, h, w) mask of patches
    seen by both branches."""
    b = images.shape[0]
    theta = eqv.random_affine(b, gen).to(images.device)
    warped = eqv.warp(images, theta)
    half = F.interpolate(warped, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True)
    idx = eqv.mosaic_indices(b).to(images.device)
    probs = model(eqv.mosaic(half[idx]))
    tiles = eqv.unmosaic(probs)[:b]
    grid = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    tiles = F.interpolate(tiles, size=grid, mode="bilinear", align_corners=False)
    return eqv.unwarp(tiles, theta)


# -- prediction ----------------------------------------------------------------------------------
class VitPcmPredictor:
    """A trained ViT-PCM as a :class:`clipseg_cli.inference.Predictor`: the image scaled
    to ``size`` x ``size`` (patch grid size / patch), per-patch softmax restricted to background and
    the image's labels, nearest upsampling to the image (the per-patch argmax, scaled)."""

    def __init__(self, model: PatchClassMapper, norm: Normalization, class_names: list[str], device: torch.device,
                 size: int, flip: bool = False, labels: ImageLabels | None = None) -> None:  # fmt: skip
        self.model = model.to(device).eval()
        self.norm, self.class_names, self.device, self.size, self.flip = (
            norm,
            class_names,
            device,
            size,
            flip,
        )
        self.labels = labels or {}

    @torch.no_grad()
    def patch_probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (K+1, g, g) per-patch probabilities."""
        resized = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(self.norm.apply(resized)).unsqueeze(0).to(self.device)
        probs = self.model(x)[0]
        if self.flip:
            probs = 0.5 * (probs + self.model(x.flip(-1))[0].flip(-1))
        if labels is not None:
            keep = torch.zeros(probs.shape[0], dtype=torch.bool, device=probs.device)
            keep[0] = True
            keep[[v for v in labels if 0 < v < probs.shape[0]]] = True
            probs = probs * keep[:, None, None]
            probs = probs / probs.sum(dim=0, keepdim=True).clamp_min(1e-12)
        return probs.float().cpu().numpy()

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        probs = self.patch_probabilities(image, labels)
        h, w = image.shape[:2]
        up = torch.from_numpy(probs)[None]
        return F.interpolate(up, size=(h, w), mode="nearest")[0].numpy()

    def image_labels(self, key: str) -> list[int] | None:
        return self.labels.get(key)


def predictor_from_checkpoint(ckpt: Mapping[str, Any], device: torch.device, options: InferenceOptions | None = None,
                              size: int | None = None) -> VitPcmPredictor:  # fmt: skip
    cfg = ckpt["model_config"]
    try:
        model = build_model(cfg)
        model.load_state_dict(ckpt["model"])
        norm = Normalization.from_dict(cfg["normalization"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise model_mismatch(exc) from None
    size = int(size or cfg.get("predict_size", 960))
    if size % model.patch_size:
        raise ConfigError(f"prediction size {size} is not a multiple of the patch size {model.patch_size}")
    labels = saved_image_labels(ckpt.get("image_labels"))
    flip = bool(options.flip) if options is not None else False
    return VitPcmPredictor(model, norm, list(ckpt["class_names"]), device, size, flip, labels)
