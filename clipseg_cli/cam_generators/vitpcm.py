"""ViT-PCM (Rossetti et al., ECCV 2022): patch-class mapping as a learned CAM generator.

Network (:class:`PatchClassMapper`): a ViT (:mod:`clipseg_cli.cam_generators.vit_backbone`: our
CLIP image tower or a timm-layout ImageNet ViT) gives the final-normed patch tokens of its last block
(class token ignored); an HV-BiLSTM (bidirectional LSTMs over the rows and over the columns of the
patch grid, outputs concatenated) conditions them; a linear patch classifier to K+1 classes
(channel 0 background) with a softmax per patch gives the baseline pseudo mask; global max pooling
per class gives the image scores.

Training (:class:`VitPcmTrainer`, image-level labels only): ``L = L_MCE + L_ET + l2 |W|^2``
(eqs. 1, 8, 9; W the classifier weights). The second branch warps the batch with a random affine
transform (translate, rotate, scale), halves it and tiles groups of four into 2x2 mosaics of the
input size; its patch maps are split back, upsampled and un-warped
(:mod:`clipseg_cli.cam_generators.vitpcm_equivariance`). Schedule: Adam, ``--frozen-epochs`` (2)
at ``--lr`` (1e-3) with the backbone frozen, then the last ``--unfreeze`` (4) blocks train too at
``--lr-finetune`` (1e-4).

Run folder as :mod:`clipseg_cli.segmentation.train`: atomic ``last.pt`` (kind ``cam.vitpcm``, whole
model, optimizer, RNG states), exact ``--resume``, ``metrics.jsonl``, ``loss.png``, ``run.json``.
Prediction (:func:`load_predictor`, for ``wsss-label predict``): the image scaled so the patch grid
is ``predict_size / patch`` (60x60 at 960 for /16), per-patch probabilities restricted to background
and the image's labels, upsampled nearest (= argmax per patch, then upsample), optional CRF after.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clipseg_cli import __version__
from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
from clipseg_cli.cam_generators import generator_kind
from clipseg_cli.cam_generators.vit_backbone import TimmViT, patch_tokens, vit_width
from clipseg_cli.cam_generators.vitpcm_equivariance import (
    equivariance_loss,
    mce_loss,
    mosaic,
    mosaic_indices,
    random_affine,
    unmosaic,
    unwarp,
    warp,
)
from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.io.atomic import remove_stale_parts, write_json
from clipseg_cli.segmentation.checkpoint import (
    make_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipseg_cli.segmentation.dataset import TrainBatches, list_images, read_rgb
from clipseg_cli.segmentation.deeplab import Normalization
from clipseg_cli.segmentation.predict import InferenceOptions
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

KIND = generator_kind("vitpcm")
CLIP_NORM = Normalization(
    tuple(255.0 * m for m in CLIP_MEAN), tuple(255.0 * s for s in CLIP_STD)
)  # type: ignore[arg-type]
TIMM_NORM = Normalization(
    (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)
)  # timm's ViT-B/16 (augreg): mean = std = 0.5

ImageLabels = dict[str, list[int]]


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

    def __init__(
        self, backbone: nn.Module, num_classes: int, lstm_hidden: int = 256
    ) -> None:
        super().__init__()
        self.backbone = backbone
        dim = vit_width(backbone)
        self.lstm = HVBiLSTM(dim, lstm_hidden)
        self.classifier = nn.Linear(self.lstm.out_dim, num_classes)
        # The paper initialises the classifier from a Gaussian; scaled by fan-in here so the
        # per-patch softmax does not start saturated.
        nn.init.normal_(self.classifier.weight, std=self.lstm.out_dim**-0.5)
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
    )


# -- data ----------------------------------------------------------------------------------------
class LabelledImages(Dataset):
    """Images with image-level labels, resized to ``size`` x ``size``, random horizontal flip; item
    ``(index, g)`` draws its augmentation from ``default_rng([seed, g])`` (exact resume)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[Sequence[int]], num_classes: int, norm: Normalization,
                 size: int, seed: int) -> None:  # fmt: skip
        self.paths, self.norm, self.size, self.seed = list(paths), norm, size, seed
        self.targets = []
        for values in labels:
            t = torch.zeros(num_classes)
            t[0] = 1.0
            t[list(values)] = 1.0
            self.targets.append(t)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, object]:
        index, g = item
        rng = np.random.default_rng([self.seed, g])
        try:
            image = read_rgb(self.paths[index])
            error = ""
        except ImageError as exc:
            image, error = np.zeros((self.size, self.size, 3), np.uint8), str(exc)
        image = cv2.resize(
            image, (self.size, self.size), interpolation=cv2.INTER_LINEAR
        )
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {
            "image": torch.from_numpy(self.norm.apply(image)),
            "target": self.targets[index],
            "error": error,
        }


# -- configuration -------------------------------------------------------------------------------
@dataclass
class VitPcmConfig:
    """Everything ``train-cam vitpcm`` was asked for; :data:`DEFINING` fields are kept on --resume."""

    images: Path
    out: Path
    class_names: list[str]
    backbone: str = "clip"
    clip_weights: str | None = None
    size: int = 384
    epochs: int = 10
    iters: int | None = None  # training length in iterations instead of epochs (--iters)
    batch: int = 8
    frozen_epochs: int = 2
    lr: float = 1e-3
    lr_finetune: float = 1e-4
    unfreeze: int = 4
    lstm_hidden: int = 256
    l2: float = 0.1
    et_weight: float = 1.0
    predict_size: int = 960
    seed: int = 0
    save_every: int = 500
    workers: int = 0

    DEFINING = ("class_names", "backbone", "size", "epochs", "iters", "batch", "frozen_epochs", "lr", "lr_finetune",
                "unfreeze", "lstm_hidden", "l2", "et_weight", "predict_size", "seed")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

    def apply_saved(self, saved: Mapping[str, Any]) -> None:
        for name in self.DEFINING:
            if name in saved:
                setattr(
                    self,
                    name,
                    saved[name] if name != "class_names" else list(saved[name]),
                )
        self.clip_weights = saved.get("clip_weights")


def labels_for(index: Any, images: Path, class_names: Sequence[str]) -> ImageLabels:
    from clipseg_cli.refiners.base import labels_for_images

    return labels_for_images(index, images, class_names)


def load_resume(out: Path) -> dict[str, Any] | None:
    last = Path(out) / LAST
    if not last.exists():
        return None
    ckpt = read_checkpoint(last, "--resume")
    if (
        ckpt.get("kind") != KIND
        or "optimizer" not in ckpt
        or "train_config" not in ckpt
    ):
        raise ConfigError(
            f"--resume: {last} is not a training checkpoint of train-cam vitpcm"
        )
    return ckpt


# -- training ------------------------------------------------------------------------------------
class VitPcmTrainer:
    """One run of ``train-cam vitpcm``. ``backbone``: the ViT of a fresh run (None on --resume, where
    the checkpoint holds it); ``labels``: a LabelIndex (None on --resume: the run's labels)."""

    def __init__(self, cfg: VitPcmConfig, device: torch.device, labels: Any | None, *,
                 backbone: nn.Module | None = None, resume: bool = False, reporter: Reporter | None = None) -> None:  # fmt: skip
        self.cfg, self.device = cfg, device
        self.reporter = reporter or QuietReporter()
        self.state = RunState()
        out = cfg.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        ckpt = None
        if (out / LAST).exists():
            if not resume:
                raise ConfigError(
                    f"{out} already holds a training run ({LAST}); pass --resume to continue it or choose another --out"
                )
            ckpt = load_resume(out)
            cfg.apply_saved(ckpt["train_config"])
        elif resume:
            self.reporter.message(f"nothing to resume in {out}: starting a new run")
        if labels is None:
            if ckpt is None:
                raise ConfigError("give --labels FILE (or --annotations DIR)")
            self.image_labels: ImageLabels = {
                k: list(v) for k, v in ckpt.get("image_labels", {}).items()
            }
        else:
            self.image_labels = labels_for(labels, cfg.images, cfg.class_names)
        found = list_images(cfg.images)
        self.keys = [k for k in found if k in self.image_labels]
        if not self.keys:
            raise ConfigError(f"no image in {cfg.images} has labels")
        self.paths = [found[k] for k in self.keys]
        self.num_classes = len(cfg.class_names) + 1
        self.iters_per_epoch = math.ceil(len(self.keys) / cfg.batch)
        self.iters = cfg.iters if cfg.iters else cfg.epochs * self.iters_per_epoch
        self.frozen_iters = cfg.frozen_epochs * self.iters_per_epoch
        if ckpt is not None:
            self.model = build_model(ckpt["model_config"])
            try:
                self.model.load_state_dict(ckpt["model"])
            except RuntimeError as exc:
                raise ConfigError(
                    f"--resume: checkpoint weights do not fit ({str(exc).splitlines()[0][:160]})"
                ) from None
        else:
            if backbone is None:
                raise ConfigError("a fresh run needs a backbone")
            seed_everything(cfg.seed)
            self.model = PatchClassMapper(backbone, self.num_classes, cfg.lstm_hidden)
        multiple = 2 * self.model.patch_size
        if cfg.size % multiple:
            raise ConfigError(
                f"--size must be a multiple of {multiple} (twice the patch size) ; got {cfg.size}"
            )
        self.norm = backbone_normalization(self.model.backbone)
        self.model.to(device)
        self.model.set_trainable_blocks(0)
        # Two groups from the start (head, last blocks); the second has lr 0 and no gradients while frozen.
        self.optimizer = torch.optim.Adam(
            [
                {"params": self.model.head_parameters()},
                {"params": self.model.finetune_parameters(cfg.unfreeze)},
            ],
            lr=cfg.lr,
        )
        if ckpt is not None:
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as exc:
                raise ConfigError(
                    f"--resume: optimizer state does not fit the model ({exc})"
                ) from None
            set_rng_state(ckpt["rng"])
            st = self.state
            st.iteration, st.seconds = (
                int(ckpt["iteration"]),
                float(ckpt.get("seconds", 0.0)),
            )
            st.last_saved = st.iteration
            truncate_jsonl(out / METRICS, st.iteration)
            self.reporter.message(
                f"resuming {out} at iteration {st.iteration} of {self.iters}"
            )
        else:
            out.mkdir(parents=True, exist_ok=True)
            truncate_jsonl(out / METRICS, 0)
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(out)

    # -- checkpoints --
    def model_config(self) -> dict[str, Any]:
        return {
            "backbone": describe_backbone(self.model.backbone), "num_classes": self.num_classes,
            "lstm_hidden": self.cfg.lstm_hidden, "normalization": self.norm.to_dict(),
            "predict_size": self.cfg.predict_size, "backbone_source": self.cfg.backbone,
        }  # fmt: skip

    def save(self) -> None:
        st, cfg = self.state, self.cfg
        save_checkpoint(
            cfg.out / LAST,
            make_checkpoint(
                KIND, self.model_config(), cfg.class_names, self.model.state_dict(), iteration=st.iteration,
                max_iter=self.iters, image_labels={k: self.image_labels[k] for k in self.keys},
                optimizer=self.optimizer.state_dict(), rng=rng_state(), train_config=cfg.to_json(),
                seconds=st.seconds, images=len(self.keys),
            ),
        )  # fmt: skip
        st.last_saved = st.iteration
        self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        ran = st.iteration - st.session_start_iter
        summary = {
            "command": "train-cam vitpcm", "wsss_label": __version__, "torch": torch.__version__, "status": st.status,
            "kind": KIND, "model_config": self.model_config(), "config": cfg.to_json(), "images": len(self.keys),
            "device": str(self.device), "iteration": st.iteration, "max_iter": self.iters,
            "iters_per_epoch": self.iters_per_epoch, "frozen_iters": self.frozen_iters, "seconds": round(st.seconds, 3),
            "this_session": {
                "iterations": ran, "seconds": round(st.session_seconds, 3),
                "seconds_per_iteration": round(st.session_seconds / ran, 4) if ran else None,
            },
            "final_loss": round(float(np.mean(st.losses[-20:])), 6) if st.losses else None,
            "final_loss_parts": {k: round(v, 6) for k, v in getattr(self, "_last_parts", {}).items()},
            "peak_memory": peak_memory(self.device),
            "files": {"last": LAST, "metrics": METRICS, "curve": CURVE},
        }  # fmt: skip
        write_json(cfg.out / RUN, summary)
        return summary

    # -- the loop --
    def _loader(self) -> DataLoader:
        cfg = self.cfg
        dataset = LabelledImages(
            self.paths,
            [self.image_labels[k] for k in self.keys],
            self.num_classes,
            self.norm,
            cfg.size,
            cfg.seed,
        )
        sampler = TrainBatches(
            len(self.keys), cfg.batch, cfg.seed, self.state.iteration, self.iters
        )
        return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.workers,
                          pin_memory=self.device.type == "cuda", worker_init_fn=worker_init if cfg.workers > 0 else None)  # fmt: skip

    def _phase(self, iteration: int) -> tuple[bool, float, float]:
        """(backbone frozen, head lr, backbone lr) at ``iteration``."""
        cfg = self.cfg
        if iteration < self.frozen_iters or cfg.unfreeze <= 0:
            return True, cfg.lr, 0.0
        return False, cfg.lr_finetune, cfg.lr_finetune

    def losses(
        self, images: torch.Tensor, targets: torch.Tensor, iteration: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        return vitpcm_loss(
            self.model,
            images,
            targets,
            cfg.seed * 1_000_003 + iteration,
            cfg.l2,
            cfg.et_weight,
        )

    def run(self) -> dict[str, Any]:
        """Train to the end; returns run.json's summary. Ctrl-C saves last.pt, then re-raises."""
        cfg, st = self.cfg, self.state
        st.session_start_iter = st.iteration
        self.reporter.start(st.iteration, self.iters)
        self.model.train()
        started, base_seconds, diverged = time.perf_counter(), st.seconds, False
        try:
            with open(cfg.out / METRICS, "a") as metrics:
                for batch in self._loader():
                    errors = [e for e in batch["error"] if e]
                    if errors:
                        raise ConfigError(errors[0])
                    frozen, lr_head, lr_backbone = self._phase(st.iteration)
                    self.model.set_trainable_blocks(0 if frozen else cfg.unfreeze)
                    self.optimizer.param_groups[0]["lr"] = lr_head
                    self.optimizer.param_groups[1]["lr"] = lr_backbone
                    images = batch["image"].to(self.device, non_blocking=True)
                    targets = batch["target"].to(self.device, non_blocking=True)
                    loss, parts = self.losses(images, targets, st.iteration)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        diverged = True
                        raise ConfigError(
                            f"the loss became {value} at iteration {st.iteration + 1}; lower --lr and start again"
                        )
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    st.iteration += 1
                    st.session_seconds = time.perf_counter() - started
                    st.seconds = base_seconds + st.session_seconds
                    st.losses.append(value)
                    self._last_parts = parts
                    row = {"iteration": st.iteration, "loss": value, **parts, "lr": lr_head, "frozen": frozen,
                           "seconds": round(st.seconds, 3)}  # fmt: skip
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                    ran = st.iteration - st.session_start_iter
                    self.reporter.step(
                        st.iteration,
                        value,
                        lr_head,
                        ran / max(st.session_seconds, 1e-9),
                    )
                    if st.iteration % cfg.save_every == 0 or st.iteration == self.iters:
                        if st.iteration == self.iters:
                            st.status = "finished"
                        self.save()
        except (KeyboardInterrupt, ConfigError) as exc:
            st.status = (
                "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            )
            if st.iteration > st.last_saved and not diverged:
                self.save()
                self.reporter.message(
                    f"saved {cfg.out / LAST} at iteration {st.iteration}; rerun with --resume to continue"
                )
            write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
            raise
        except RuntimeError as exc:
            message = out_of_memory_message(exc, self.device)
            if message is None:
                raise
            raise ConfigError(
                f"{message} at --batch {cfg.batch} --size {cfg.size}; lower them"
            ) from None
        if st.last_saved != st.iteration:
            self.save()
        st.status = "finished"
        write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
        return self.write_summary()


def vitpcm_loss(model: PatchClassMapper, images: torch.Tensor, targets: torch.Tensor, branch_seed: int,
                l2: float = 0.1, et_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """Eq. 9 plus the classifier's L2: ``L_MCE + et_weight * L_ET + l2 |W|^2`` on a batch and its
    named parts. The second branch's transforms are drawn from ``branch_seed`` (the trainer uses
    (seed, iteration), so they repeat on --resume)."""
    probs = model(images)
    mce = mce_loss(probs, targets)
    reg = l2 * model.classifier.weight.pow(2).sum()
    loss = mce + reg
    parts = {"mce": float(mce.detach()), "l2": float(reg.detach())}
    if et_weight > 0:
        gen = torch.Generator().manual_seed(branch_seed)
        branch_probs, valid = second_branch(model, images, gen)
        et = equivariance_loss(branch_probs, probs, valid)
        loss = loss + et_weight * et
        parts["et"] = float(et.detach())
    return loss, parts


def second_branch(
    model: PatchClassMapper, images: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The equivariance branch c = m(b(.)) and its inverse: warp (b), halve, 2x2 mosaics (m) of the
    input size; the patch maps split back (m^-1), upsampled to the main grid and un-warped (b^-1).
    Returns (B, K+1, h, w) probabilities and the (B, 1, h, w) mask of patches seen by both branches."""
    b = images.shape[0]
    theta = random_affine(b, gen).to(images.device)
    warped = warp(images, theta)
    half = F.interpolate(
        warped, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True
    )
    idx = mosaic_indices(b).to(images.device)
    probs = model(mosaic(half[idx]))
    tiles = unmosaic(probs)[:b]
    grid = (images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size)
    tiles = F.interpolate(tiles, size=grid, mode="bilinear", align_corners=False)
    return unwarp(tiles, theta)


# -- prediction ----------------------------------------------------------------------------------
class VitPcmPredictor:
    """A trained ViT-PCM as a :class:`clipseg_cli.segmentation.predict.Predictor`: the image scaled
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
    def patch_probabilities(
        self, image: np.ndarray, labels: Sequence[int] | None = None
    ) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (K+1, g, g) per-patch probabilities."""
        resized = cv2.resize(
            image, (self.size, self.size), interpolation=cv2.INTER_LINEAR
        )
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

    def probabilities(
        self, image: np.ndarray, labels: Sequence[int] | None = None
    ) -> np.ndarray:
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
        raise ConfigError(
            f"checkpoint does not match its model_config ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    size = int(size or cfg.get("predict_size", 960))
    if size % model.patch_size:
        raise ConfigError(
            f"prediction size {size} is not a multiple of the patch size {model.patch_size}"
        )
    labels = {
        str(k): [int(v) for v in vals]
        for k, vals in (ckpt.get("image_labels") or {}).items()
    }
    flip = bool(options.flip) if options is not None else False
    return VitPcmPredictor(
        model, norm, list(ckpt["class_names"]), device, size, flip, labels
    )


def load_predictor(
    ckpt: dict[str, Any], device: torch.device, options: InferenceOptions
) -> VitPcmPredictor:
    """``wsss-label predict`` on a ``cam.vitpcm`` checkpoint: single scale at the run's
    ``predict_size`` (960 by default: a 60x60 grid for /16 patches), ``options.flip`` honoured,
    ``options.scales`` not used; the training images' labels for images without --labels."""
    return predictor_from_checkpoint(ckpt, device, options)
