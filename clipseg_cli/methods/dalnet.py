"""DALNet (Jang et al., ECCV 2024, sections 3.2-3.5): a ViT CAM generator trained from image-level
labels with dense alignment to frozen CLIP text embeddings.

Network (:class:`DALNet`): a ViT (:mod:`clipseg_cli.methods.vit_backbone`), a 1x1 classifier
on the final patch tokens (final CAMs, GMP logits -> ``L_cls``) and one on the tokens of an
intermediate block (``inter_block``, 1-based; 10 for ViT-B/16, ``depth - 2`` in general; GMP logits ->
``L_inter``). The intermediate CAMs (eq. 1) of the image's classes, thresholded at ``beta``, give the
object-aware mask ``M_obj`` (eq. 2). Learned projections map the class token, the patch tokens and
the frozen CLIP text embeddings (``a photo of {}.``, ``a photo of background``; stored in the
checkpoint, so prediction needs no CLIP) into one space of ``proj_dim``.

Losses (eq. 7): ``L_cls + L_inter + lambda_i L_im + lambda_e L_ex + lambda_p L_ptc`` with
(1.0, 1.0, 0.2):

- ``L_im`` (eq. 3): ``-sum_c y_c log s(v_cls, t_c) - log(1 - s(v_cls, t_bg))``; the paper's ``sim``
  must lie in (0, 1) for the logs, so ``s = (1 + cos) / 2`` (clamped to [1e-6, 1 - 1e-6]); mean
  over the batch.
- ``L_ex`` (eqs. 4-6): per patch token InfoNCE of the masked projected tokens (fg: positive
  ``sum_c y_c cos(v^fg, t_c)``, negative ``cos(v^fg, t_bg)``; bg the other way round), averaged over
  all N^2 tokens (masked-out tokens are zero vectors: cos 0), background term weighted by
  ``lambda = 0.001``, temperature ``tau = 1``.
- ``L_ptc`` (ToCo's patch token contrast): pairwise labels from the intermediate CAMs (argmax over
  the image's classes; a token is background at or below ``PTC_LOW`` = 0.25, foreground above
  ``PTC_HIGH`` = 0.7, ignored in between: the thresholds of ToCo's training scripts, which DALNet
  builds on), on the absolute cosine similarity of the final patch tokens:
  ``0.5 (1 - mean over same-label pairs) + 0.5 mean over different-label pairs``.

Training (:class:`Dalnet`, run by the engine of :mod:`clipseg_cli.training`; :func:`train_dalnet`
for arrays in memory): AdamW (weight decay 0.01), linear warm-up from ``1e-6 * lr`` over ``warmup``
iterations then poly decay 0.9; random rescale / crop / flip crops, each batch drawn (with
replacement) from a generator seeded by (seed, iteration), so ``--resume`` is exact. Prediction
(:meth:`Dalnet.load_predictor`): multi-scale (+ flip) final CAMs of the image's labels, background
channel = ``bg_threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.data.images import read_rgb
from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.inference import InferenceOptions
from clipseg_cli.methods import register
from clipseg_cli.methods.base import (
    CamMethod,
    MethodInputs,
    clip_weights_record,
    weights_setting,
)
from clipseg_cli.methods.vit_backbone import TimmViT, ViTConfig, build_backbone, forward_tokens, vit_width
from clipseg_cli.training.config import setting
from clipseg_cli.training.data import seed_everything
from clipseg_cli.training.engine import Trainer
from clipseg_cli.training.reporting import QuietReporter
from clipseg_cli.training.schedules import set_lr, warmup_poly_lr

KIND = "cam.dalnet"
FG_TEMPLATE = "a photo of {}."
BG_PROMPT = "a photo of background"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TIMM_MEAN = (0.5, 0.5, 0.5)
TIMM_STD = (0.5, 0.5, 0.5)
LOSS_WEIGHTS = (1.0, 1.0, 0.2)  # lambda_i, lambda_e, lambda_p (eq. 7)


# -- losses (each a plain function of tensors, tested against hand computations) ----------------
def cam_from_logits(maps: torch.Tensor) -> torch.Tensor:
    """Eq. 1: (B, C, h, w) class maps -> ReLU, divided by each map's max (0 where the max is 0)."""
    r = F.relu(maps)
    return r / r.flatten(2).amax(dim=2).clamp_min(1e-5)[..., None, None]


def gmp_logits(maps: torch.Tensor) -> torch.Tensor:
    """Global max pooling of (B, C, h, w) maps -> (B, C) logits."""
    return maps.flatten(2).amax(dim=2)


def object_mask(inter_cam: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """M_obj (B, h, w) in {0, 1}: the max over the image's classes of its intermediate CAMs >= beta."""
    masked = inter_cam * labels[..., None, None]
    return (masked.amax(dim=1) >= beta).to(inter_cam.dtype)


def implicit_alignment_loss(v_cls: torch.Tensor, t_fg: torch.Tensor, t_bg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 3 with ``sim = (1 + cos) / 2``: v_cls (B, d), t_fg (C, d), t_bg (d,) or (1, d), labels (B, C)."""
    v = F.normalize(v_cls, dim=-1)
    s_fg = ((1 + v @ F.normalize(t_fg, dim=-1).T) / 2).clamp(1e-6, 1 - 1e-6)
    s_bg = ((1 + v @ F.normalize(t_bg.reshape(-1), dim=0)) / 2).clamp(1e-6, 1 - 1e-6)
    per_image = -(labels * s_fg.log()).sum(dim=1) - (1 - s_bg).log()
    return per_image.mean()


def explicit_alignment_loss(
    v_p: torch.Tensor,
    mask: torch.Tensor,
    t_fg: torch.Tensor,
    t_bg: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.001,
    tau: float = 1.0,
) -> torch.Tensor:
    """Eqs. 4-6: v_p (B, N, d) projected patch tokens, mask (B, N) M_obj, t_fg (C, d), t_bg (d,),
    labels (B, C). Cosines of zero (masked-out) tokens are 0. Mean over batch and tokens."""
    v_fg = F.normalize(v_p * mask[..., None], dim=-1)
    v_bg = F.normalize(v_p * (1 - mask)[..., None], dim=-1)
    tf, tb = F.normalize(t_fg, dim=-1), F.normalize(t_bg.reshape(-1), dim=0)
    pos_fg = ((v_fg @ tf.T) * labels[:, None, :]).sum(dim=-1)
    neg_fg = v_fg @ tb
    pos_bg = v_bg @ tb
    neg_bg = ((v_bg @ tf.T) * labels[:, None, :]).sum(dim=-1)

    def nce(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return -(pos / tau - torch.logaddexp(pos / tau, neg / tau)).mean()

    return nce(pos_fg, neg_fg) + lam * nce(pos_bg, neg_bg)


PTC_LOW, PTC_HIGH = 0.25, 0.7  # ToCo's --low_thre / --high_thre (scripts/dist_train_voc_seg_neg.py)


def token_labels(inter_cam: torch.Tensor, labels: torch.Tensor, low: float = PTC_LOW, high: float = PTC_HIGH) -> torch.Tensor:
    """ToCo's pseudo labels of tokens (B, h*w), as its ``cam_to_label(ignore_mid=True)``: 0 background
    (max CAM <= low), 1 + c the argmax class (max CAM > high), -1 ignored (in between). Only the
    image's classes count."""
    masked = (inter_cam * labels[..., None, None]).flatten(2)
    peak, arg = masked.max(dim=1)
    out = torch.full_like(arg, -1)
    out[peak <= low] = 0
    high_mask = peak > high
    out[high_mask] = arg[high_mask] + 1
    return out


def patch_contrast_loss(tokens: torch.Tensor, token_label: torch.Tensor) -> torch.Tensor:
    """ToCo's ``get_masked_ptc_loss``: tokens (B, N, D), token_label (B, N) with -1 ignored.
    ``0.5 (1 - sum(pos |cos|) / (n_pos + 1)) + 0.5 sum(neg |cos|) / (n_neg + 1)``."""
    x = F.normalize(tokens, dim=-1, eps=1e-8)
    cos = (x @ x.transpose(1, 2)).abs()
    valid = (token_label[:, :, None] >= 0) & (token_label[:, None, :] >= 0)
    same = token_label[:, :, None] == token_label[:, None, :]
    pos, neg = (valid & same).to(cos.dtype), (valid & ~same).to(cos.dtype)
    return 0.5 * (1 - (pos * cos).sum() / (pos.sum() + 1)) + 0.5 * (neg * cos).sum() / (neg.sum() + 1)


# -- the network ---------------------------------------------------------------------------------
class DALNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        text_fg: torch.Tensor,
        text_bg: torch.Tensor,
        *,
        backbone_spec: str,
        inter_block: int | None = None,
        proj_dim: int = 256,
        beta: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone_spec = backbone_spec
        depth, width = len(backbone.blocks), vit_width(backbone)
        self.inter_block = int(inter_block) if inter_block else max(1, min(10, depth - 2))
        if not 1 <= self.inter_block <= depth:
            raise ConfigError(f"inter_block {self.inter_block} outside 1..{depth}")
        self.beta = beta
        num_classes, text_dim = text_fg.shape
        self.register_buffer("text_fg", text_fg.detach().float().clone())
        self.register_buffer("text_bg", text_bg.detach().float().reshape(1, -1).clone())
        self.classifier = nn.Conv2d(width, num_classes, 1, bias=False)
        self.inter_norm = nn.LayerNorm(width)
        self.inter_classifier = nn.Conv2d(width, num_classes, 1, bias=False)
        self.visual_proj = nn.Linear(width, proj_dim)
        self.text_proj = nn.Linear(text_dim, proj_dim)
        for conv in (self.classifier, self.inter_classifier):
            nn.init.kaiming_normal_(conv.weight, a=np.sqrt(5), mode="fan_out")

    @property
    def num_classes(self) -> int:
        return self.text_fg.shape[0]

    def model_config(self) -> dict[str, Any]:
        b = self.backbone
        cfg = {
            "backbone": self.backbone_spec,
            "arch": "timm" if isinstance(b, TimmViT) else "clip",
            "width": vit_width(b),
            "depth": len(b.blocks),
            "patch_size": b.patch_size,
            "inter_block": self.inter_block,
            "proj_dim": self.visual_proj.out_features,
            "beta": self.beta,
            "num_classes": self.num_classes,
            "text_dim": self.text_fg.shape[1],
        }
        if isinstance(b, TimmViT):
            cfg["heads"] = b.blocks[0].attn.heads
            cfg["grid"] = int(round((b.pos_embed.shape[1] - 1) ** 0.5))
        else:
            cfg["grid"] = int(round((b.positional_embedding.shape[0] - 1) ** 0.5))
            cfg["embed_dim"] = int(b.proj.shape[1])  # CLIP's image projection (unused, kept in the state)
        return cfg

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (TIMM_MEAN, TIMM_STD) if isinstance(self.backbone, TimmViT) else (CLIP_MEAN, CLIP_STD)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised (B, 3, H, W) -> cls (B, D), patches (B, N, D), maps / inter_maps (B, C, h, w)."""
        cls, patches, (h, w), inter = forward_tokens(self.backbone, image, layers=(self.inter_block - 1,))
        feats = patches.transpose(1, 2).reshape(patches.shape[0], -1, h, w)
        mid = self.inter_norm(inter[self.inter_block - 1][:, 1:])
        mid = mid.transpose(1, 2).reshape(mid.shape[0], -1, h, w)
        return {"cls": cls, "patches": patches, "maps": self.classifier(feats), "inter_maps": self.inter_classifier(mid)}

    def losses(
        self, out: Mapping[str, torch.Tensor], labels: torch.Tensor, weights: Sequence[float] = LOSS_WEIGHTS
    ) -> dict[str, torch.Tensor]:
        l_cls = F.multilabel_soft_margin_loss(gmp_logits(out["maps"]), labels)
        l_inter = F.multilabel_soft_margin_loss(gmp_logits(out["inter_maps"]), labels)
        inter_cam = cam_from_logits(out["inter_maps"].detach())
        mask = object_mask(inter_cam, labels, self.beta).flatten(1)
        t_fg, t_bg = self.text_proj(self.text_fg), self.text_proj(self.text_bg)[0]
        l_im = implicit_alignment_loss(self.visual_proj(out["cls"]), t_fg, t_bg, labels)
        l_ex = explicit_alignment_loss(self.visual_proj(out["patches"]), mask, t_fg, t_bg, labels)
        l_ptc = patch_contrast_loss(out["patches"], token_labels(inter_cam, labels))
        wi, we, wp = weights
        total = l_cls + l_inter + wi * l_im + we * l_ex + wp * l_ptc
        return {"loss": total, "cls": l_cls, "inter": l_inter, "im": l_im, "ex": l_ex, "ptc": l_ptc}


def build_from_config(cfg: Mapping[str, Any]) -> DALNet:
    """The architecture of a checkpoint's ``model_config`` (random weights; load the state after)."""
    try:
        if cfg["arch"] == "timm":
            vit = TimmViT(int(cfg["width"]), int(cfg["depth"]), int(cfg["heads"]), int(cfg["patch_size"]), int(cfg["grid"]))
        else:
            from clipseg_cli.clip.model import VisionTransformer

            class _Cfg:  # only what VisionTransformer reads
                vision_width, vision_patch_size, vision_layers = int(cfg["width"]), int(cfg["patch_size"]), int(cfg["depth"])
                vision_heads, grid_size, embed_dim = max(1, int(cfg["width"]) // 64), int(cfg["grid"]), int(cfg["embed_dim"])

            vit = VisionTransformer(_Cfg())  # type: ignore[arg-type]
        zeros_fg = torch.zeros(int(cfg["num_classes"]), int(cfg["text_dim"]))
        return DALNet(
            vit,
            zeros_fg,
            torch.zeros(int(cfg["text_dim"])),
            backbone_spec=str(cfg["backbone"]),
            inter_block=int(cfg["inter_block"]),
            proj_dim=int(cfg["proj_dim"]),
            beta=float(cfg["beta"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"not a DALNet model_config ({exc})") from None


def text_embeddings(clip_model: nn.Module, class_prompts: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen CLIP text features (C, dt) of ``a photo of {}.`` and (dt,) of ``a photo of background``."""
    from clipseg_cli.clip.tokenizer import tokenize

    texts = [FG_TEMPLATE.format(p) for p in class_prompts] + [BG_PROMPT]
    with torch.no_grad():
        feats = clip_model.encode_text(tokenize(texts).to(device)).float().cpu()
    return feats[:-1], feats[-1]


# -- data ----------------------------------------------------------------------------------------
def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def augment(image: np.ndarray, rng: np.random.Generator, crop: int, scales: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale (long side ~ crop * s), flip, pad to ``crop`` (pad marked invalid), random crop."""
    import cv2

    h, w = image.shape[:2]
    s = rng.uniform(*scales) * crop / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    ph, pw = max(crop, nh), max(crop, nw)
    canvas = np.zeros((ph, pw, 3), np.uint8)
    canvas[:nh, :nw] = image
    y, x = int(rng.integers(0, ph - crop + 1)), int(rng.integers(0, pw - crop + 1))
    return canvas[y : y + crop, x : x + crop], (y, x)  # type: ignore[return-value]


@dataclass(kw_only=True)
class DalnetConfig(ViTConfig):
    """Everything ``train-cam dalnet`` is asked for; the defining fields are kept on --resume."""

    weights: Path | None = weights_setting(
        "CLIP checkpoint for the frozen text encoder (and --backbone clip) (default: $WSSS_LABEL_WEIGHTS, else the cached ViT-B-16.pt)."
    )
    iters: int = setting(20000, "Training iterations.", minimum=1)
    batch: int = setting(4, "Images per training iteration.", flags=("--batch-size",), minimum=1)
    lr: float = setting(6e-5, "AdamW peak learning rate (after warm-up; poly 0.9 decay).", positive=True)
    warmup: int = setting(1500, "Iterations of linear learning-rate warm-up. Starts at 1e-6 x --lr.",
                          flags=("--warmup-iters",), hidden_flags=("--warmup",), minimum=0)  # fmt: skip
    warmup_ratio: float = setting(1e-6, cli=False)
    power: float = setting(0.9, cli=False)
    weight_decay: float = setting(0.01, cli=False)
    crop: int = setting(448, "Square training crop (a multiple of the patch size).", minimum=16)
    scales: tuple[float, float] = setting((0.5, 1.5), cli=False)
    inter_block: int = setting(0, "Block (1-based) of the intermediate CAM; 0: 10 on ViT-B (depth - 2).", minimum=0)
    beta: float = setting(0.5, "Background threshold of the object-aware mask.")
    proj_dim: int = setting(256, cli=False)
    loss_weights: tuple[float, float, float] = setting(LOSS_WEIGHTS, cli=False)
    save_every: int = setting(1000, "Write last.pt every N iterations (0: only at the end).", minimum=0,
                              defining=False)  # fmt: skip
    seg_head: bool = setting(False, "The single-stage segmentation head (not implemented yet).", defining=False)

    def validate(self) -> None:
        super().validate()
        if not 0 < self.beta < 1:
            raise ConfigError(f"--beta must be in (0, 1), got {self.beta}")
        if self.seg_head:
            raise ConfigError("--seg-head is not implemented yet; DALNet's CAMs are trained without it")


TrainConfig = DalnetConfig


def lr_at(cfg: DalnetConfig, iteration: int) -> float:
    """Linear warm-up from ``warmup_ratio * lr`` to ``lr`` over ``warmup`` iterations, then poly."""
    return warmup_poly_lr(cfg.lr, iteration, cfg.iters, cfg.warmup, cfg.warmup_ratio, cfg.power)


def _rgb(item: np.ndarray | Path) -> np.ndarray:
    return item if isinstance(item, np.ndarray) else read_rgb(Path(item))


def make_batch(cfg: DalnetConfig, images: Sequence[np.ndarray | Path], labels: np.ndarray, iteration: int,
               mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """The batch of ``iteration``: a pure function of (seed, iteration), so resuming is exact."""
    rng = np.random.default_rng([cfg.seed, iteration])
    picks = rng.integers(0, len(images), cfg.batch)
    xs = [normalise(augment(_rgb(images[i]), rng, cfg.crop, cfg.scales)[0], mean, std) for i in picks]
    return torch.stack(xs), torch.from_numpy(labels[picks]).float()


# -- training ------------------------------------------------------------------------------------
@register
class Dalnet(CamMethod):
    """One run of ``train-cam dalnet``. ``model`` and ``samples`` (images as uint8 RGB arrays or
    paths, and their multi-hot labels (n, C)) may be given ready (library use); otherwise they are
    built from the config, the labels and CLIP."""

    name = "dalnet"
    kind = KIND
    summary = "Train DALNet's CAMs: ViT + frozen CLIP text, global implicit and local explicit alignment, ToCo patch contrast."
    Config = DalnetConfig
    predict_options = ("bg_threshold",)
    smoke_args = {"tiny": "--crop 64 --batch-size 2 --warmup-iters 1", "base": ""}
    cfg: DalnetConfig
    model: DALNet

    def __init__(self, cfg: DalnetConfig, device: torch.device | str = "cpu", inputs: MethodInputs | None = None, *,
                 model: DALNet | None = None,
                 samples: tuple[Sequence[np.ndarray | Path], np.ndarray] | None = None) -> None:  # fmt: skip
        super().__init__(cfg, device, inputs)
        self._model, self._samples = model, samples

    def setup(self, ckpt: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.iters = cfg.iters
        self.weights = None
        if self._samples is not None:
            self.images, self.multi_hot = list(self._samples[0]), np.asarray(self._samples[1], np.float32)
            self.image_labels, self.keys = {}, []
        else:
            self.load_labelled_images(ckpt)
            self.images = list(self.paths)
            self.multi_hot = np.zeros((len(self.keys), len(cfg.class_names)), np.float32)
            for row, key in enumerate(self.keys):
                self.multi_hot[row, [v - 1 for v in self.image_labels[key]]] = 1.0
        if self._model is not None:
            self.model = self._model
        else:
            clip, self.weights = self.frozen_clip(ckpt)
            clip.requires_grad_(False)
            prompts = cfg.class_prompts or list(cfg.class_names)
            text_fg, text_bg = text_embeddings(clip, prompts, self.device)
            seed_everything(cfg.seed)
            if self.inputs.backbone is not None:
                vit = self.inputs.backbone
            elif cfg.backbone == "clip":
                vit = clip.visual.float().requires_grad_(True)
            else:
                vit = build_backbone(cfg.backbone, None, self.device)
            self.model = DALNet(vit, text_fg, text_bg, backbone_spec=cfg.backbone, inter_block=cfg.inter_block or None,
                                proj_dim=cfg.proj_dim, beta=cfg.beta)  # fmt: skip
        if cfg.crop % self.model.backbone.patch_size:
            raise ConfigError(f"--crop {cfg.crop} is not a multiple of the patch size {self.model.backbone.patch_size}")
        if ckpt is not None:
            try:
                self.model.load_state_dict(ckpt["model"])
            except RuntimeError as exc:
                raise ConfigError(f"--resume: checkpoint weights do not fit ({str(exc).splitlines()[0][:160]})") from None
        self.model.to(self.device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    @property
    def samples(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        m = self.model
        params = sum(p.numel() for p in m.parameters() if p.requires_grad)
        text = f", text from {Path(self.weights.path).name}" if self.weights is not None else ""
        return (f"dalnet on {self.device}: {len(self.images)} labelled images, {len(self.cfg.class_names)} classes, "
                f"backbone {self.cfg.backbone} ({len(m.backbone.blocks)} blocks, intermediate CAM at block "
                f"{m.inter_block}), {params / 1e6:.2f}M trainable parameters{text}")  # fmt: skip

    def batches(self, start: int) -> Iterable[Any]:
        mean, std = self.model.mean_std
        for iteration in range(start, self.iters):
            try:
                x, y = make_batch(self.cfg, self.images, self.multi_hot, iteration, mean, std)
            except ImageError as exc:
                raise ConfigError(str(exc)) from None
            yield {"image": x, "labels": y}

    def schedule(self, iteration: int) -> dict[str, Any]:
        lr = lr_at(self.cfg, iteration)
        set_lr(self.optimizer, lr)
        return {"lr": lr}

    def loss(self, batch: Mapping[str, Any], iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        x, y = batch["image"].to(self.device), batch["labels"].to(self.device)
        parts = self.model.losses(self.model(x), y, self.cfg.loss_weights)
        total = parts.pop("loss")
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def oom_hint(self) -> str:
        return f"--batch-size {self.cfg.batch} --crop {self.cfg.crop}"

    def model_config(self) -> dict[str, Any]:
        cfg = self.model.model_config()
        if self.weights is not None:
            cfg["clip_weights"] = clip_weights_record(self.weights)
        return cfg

    def checkpoint_extra(self) -> dict[str, Any]:
        mean, std = self.model.mean_std
        return {**super().checkpoint_extra(), "normalization": {"mean": list(mean), "std": list(std)},
                "images": len(self.images)}  # fmt: skip

    def summary_extra(self) -> dict[str, Any]:
        return {"images": len(self.images), "class_names": list(self.cfg.class_names)}

    @classmethod
    def load_predictor(cls, ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> DALNetPredictor:
        """``wsss-label predict`` on a ``cam.dalnet`` checkpoint (scales / flip from options;
        background threshold ``options.bg_threshold`` when given, else 0.5; no CLIP needed)."""
        return predictor_from_checkpoint(
            ckpt, device, getattr(options, "scales", (1.0,)), bool(getattr(options, "flip", False)),
            float(getattr(options, "bg_threshold", None) or 0.5),
        )  # fmt: skip


def train_dalnet(
    model: DALNet,
    images: Sequence[np.ndarray | Path],
    labels: np.ndarray,
    class_names: list[str],
    cfg: DalnetConfig,
    device: torch.device,
    *,
    resume: bool = False,
    on_step: Callable[[int, float, float, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``images`` (uint8 RGB arrays or image paths, read per batch) with multi-hot
    ``labels`` (n, C) through the training engine; returns the run summary (also in ``run.json``)."""
    cfg.class_names = list(class_names)
    reporter = QuietReporter()
    if on_step is not None:
        reporter.step = on_step  # type: ignore[method-assign]
    method = Dalnet(cfg, device, model=model, samples=(images, labels))
    return Trainer(method, resume=resume, reporter=reporter).run()


# -- prediction ----------------------------------------------------------------------------------
@dataclass
class DALNetPredictor:
    """Final CAMs of the image's labels at the image's size; background score = ``bg_threshold``
    (scores divided by their sum over classes, so the argmax is the threshold rule)."""

    model: DALNet
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    device: torch.device
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    bg_threshold: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def cams(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        """(K, H, W) final CAMs in [0, 1] (classes not in ``labels`` are 0; all when None)."""
        h, w = image.shape[:2]
        p = self.model.backbone.patch_size
        x = normalise(image, self.mean, self.std)[None].to(self.device)
        total = torch.zeros(self.model.num_classes, h, w, device=self.device)
        for s in self.scales:
            size = (max(p, int(round(h * s / p)) * p), max(p, int(round(w * s / p)) * p))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            batch = torch.cat([xs, xs.flip(-1)]) if self.flip else xs
            maps = F.relu(self.model(batch)["maps"])
            if self.flip:
                maps = maps[:1] + maps[1:].flip(-1)
            total += F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)[0]
        cam = total / total.flatten(1).amax(dim=1).clamp_min(1e-5)[:, None, None]
        if labels is not None:
            keep = torch.zeros(self.model.num_classes, dtype=torch.bool, device=self.device)
            keep[[v - 1 for v in labels if 1 <= v <= self.model.num_classes]] = True
            cam = cam * keep[:, None, None]
        return cam.float().cpu().numpy()

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        cam = self.cams(image, labels)
        bg = np.full((1, *cam.shape[1:]), self.bg_threshold, np.float32)
        scores = np.concatenate([bg, cam]).astype(np.float32)
        return scores / scores.sum(axis=0, keepdims=True)  # argmax = background threshold rule; sums to 1 for CRF


def predictor_from_checkpoint(
    ckpt: Mapping[str, Any], device: torch.device, scales: Sequence[float] = (1.0,), flip: bool = False, bg_threshold: float = 0.5
) -> DALNetPredictor:
    model = build_from_config(ckpt["model_config"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ConfigError(f"checkpoint weights do not fit its model_config ({str(exc).splitlines()[0][:160]})") from None
    model.to(device).eval()
    norm = ckpt.get("normalization") or {}
    mean, std = tuple(norm.get("mean", model.mean_std[0])), tuple(norm.get("std", model.mean_std[1]))
    return DALNetPredictor(model, list(ckpt["class_names"]), mean, std, device, tuple(scales), flip, bg_threshold)
