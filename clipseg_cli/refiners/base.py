"""What every learned refiner shares: the model contract, data, training loop, checkpoints, prediction.

A refiner (:class:`RefinerModel` subclass) brings its network and its loss; this module brings

- :class:`RefineDataset`: image / seed-mask pairs (seeds = the main command's masks, 255 ignored)
  with their image-level labels, augmented by retrain's deterministic stream
  (:mod:`clipseg_cli.segmentation.dataset`), each item also carrying the uint8 crop and a label vector;
- :class:`RefinerTrainer`: AdamW on the learnable parameters, linear warm-up then cosine decay,
  atomic ``last.pt`` every ``--save-every`` iterations / at the end / on Ctrl-C, exact ``--resume``
  (model, optimizer, RNG states, data stream), ``metrics.jsonl``, ``loss.png`` and ``run.json``
  (helpers of :mod:`clipseg_cli.segmentation.train`);
- :class:`RefinerPredictor` and :func:`load_refiner_predictor`: multi-scale + flip softmax
  (:func:`clipseg_cli.segmentation.predict.multiscale_probs`), and eq. 14 of WeakCLIP through the
  predictor's ``image_labels`` (pixels of classes the image is not labelled with become 255), so
  ``wsss-label refine predict`` and ``wsss-label predict`` write the main command's masks.

Checkpoints are those of :mod:`clipseg_cli.segmentation.checkpoint` with ``kind`` ``refiner.<method>``;
``model`` holds only the learnable parts (the frozen CLIP is identified by ``model_config.clip_weights``
and loaded from its own file), and ``image_labels`` the training images' labels.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from clipseg_cli import __version__
from clipseg_cli.cam.preprocess import CLIP_MEAN, CLIP_STD
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import remove_stale_parts, write_json
from clipseg_cli.refiners import REFINERS, refiner_kind
from clipseg_cli.segmentation.checkpoint import (
    make_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipseg_cli.segmentation.dataset import (
    Pair,
    PseudoMaskDataset,
    TrainBatches,
    check_pair_sizes,
    find_pairs,
    list_images,
)
from clipseg_cli.segmentation.deeplab import Normalization
from clipseg_cli.segmentation.predict import InferenceOptions, multiscale_probs
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
    from clipseg_cli.clip.model import CLIP
    from clipseg_cli.clip.pretrained import ResolvedWeights
    from clipseg_cli.data.labels import LabelIndex

# CLIP's pixel statistics in 0..255 units, RGB.
CLIP_NORM = Normalization(tuple(255.0 * m for m in CLIP_MEAN), tuple(255.0 * s for s in CLIP_STD), bgr=False)  # type: ignore[arg-type]
MIN_LR_FRACTION = 0.01  # cosine decay ends at 1% of --lr (the reference: 1e-4 -> 1e-6)
WARMUP_START = 1e-6  # linear warm-up starts at this fraction of the scheduled lr (mmseg's warmup_ratio)

ImageLabels = dict[str, list[int]]  # image key -> mask values (1 + class index) it is labelled with


# -- the model contract --------------------------------------------------------------------------
class RefinerModel(nn.Module):
    """A learned refiner: frozen parts (under ``frozen_prefixes``, never saved nor trained) and
    learnable parts, a ``forward`` from normalised images to class logits (channel 0 background)
    at any resolution, and a ``training_loss`` on a batch of :class:`RefineDataset`.

    Subclasses set ``method`` (its key in :data:`clipseg_cli.refiners.REFINERS`), ``OPTIONS``
    (method-specific settings and their defaults), and implement :meth:`create`,
    :meth:`from_config`, :meth:`model_config`, ``forward`` and :meth:`training_loss`.
    """

    method: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Any]] = {}
    frozen_prefixes: ClassVar[tuple[str, ...]] = ("clip.",)
    normalization: ClassVar[Normalization] = CLIP_NORM
    crop_multiple: ClassVar[int] = 16  # training crops must be multiples of this

    @property
    def kind(self) -> str:
        return refiner_kind(self.method)

    @classmethod
    def create(
        cls, clip: CLIP, class_names: Sequence[str], class_prompts: Sequence[str], options: Mapping[str, Any]
    ) -> RefinerModel:
        """A freshly initialised refiner on a frozen CLIP (the caller seeds the RNGs first);
        ``class_prompts`` are the class set's prompt texts (synonyms fused, as for labelling)."""
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


def refiner_class(method: str) -> type[RefinerModel]:
    """The RefinerModel subclass registered for ``method``; ConfigError for an unknown one."""
    target = REFINERS.get(method)
    if target is None:
        raise ConfigError(f"unknown refiner {method!r}; available: {', '.join(REFINERS)}")
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def method_of_kind(kind: str) -> str:
    method = kind.split(".", 1)[1] if kind.startswith("refiner.") else ""
    if method not in REFINERS:
        raise ConfigError(f"kind {kind!r} is not a refiner this wsss-label knows ({', '.join(REFINERS)})")
    return method


# -- labels --------------------------------------------------------------------------------------
def class_lookup(class_names: Sequence[str]) -> ClassSet:
    """A ClassSet of just these names (case- and space-insensitive lookup)."""
    names = tuple(class_names)
    return ClassSet("refiner", names, names, tuple((n,) for n in names), ())


def labels_for_images(index: LabelIndex, images: Path, class_names: Sequence[str]) -> ImageLabels:
    """Mask values (1 + class index) of every image under ``images`` that has labels.

    Images without labels (or with an empty list) are left out; an unknown class name is a
    ConfigError listing the valid ones, as for labelling.
    """
    lookup = class_lookup(class_names)
    root = Path(images)
    result: ImageLabels = {}
    for key, path in list_images(root).items():
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        names = index.lookup(rel)
        if not names:
            continue
        values: list[int] = []
        for name in names:
            if not lookup.has(name):
                raise ConfigError(f"unknown class {name!r} for image {rel}; valid classes: {', '.join(class_names)}")
            value = 1 + lookup.index(name)
            if value not in values:
                values.append(value)
        result[key] = values
    return result


def read_label_source(labels: Path | None, annotations: Path | None) -> LabelIndex:
    """``--labels FILE`` or ``--annotations DIR`` (exactly one), as the main command reads them."""
    from clipseg_cli.data.labels import read_labels_file, read_voc_annotations

    if (labels is None) == (annotations is None):
        raise ConfigError("give exactly one of --labels FILE or --annotations DIR")
    return read_labels_file(labels) if labels is not None else read_voc_annotations(annotations)  # type: ignore[arg-type]


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
@dataclass
class RefineConfig:
    """Everything ``refine train`` was asked for. The fields :meth:`apply_saved` takes fix the run:
    ``--resume`` keeps them."""

    images: Path
    seeds: Path
    out: Path
    class_names: list[str]
    class_prompts: list[str] = field(default_factory=list)  # the class set's prompt text per class
    method: str = "weakclip"
    options: dict[str, Any] = field(default_factory=dict)
    iters: int = 20000
    batch: int = 8
    crop: int = 512
    scales: tuple[float, ...] = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5)
    lr: float = 1e-4
    weight_decay: float = 3e-5
    warmup: float = 0.075
    seed: int = 0
    save_every: int = 1000
    workers: int = 0
    skip_missing: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def flat(self) -> dict[str, Any]:
        """``to_json`` with the method's options alongside the common settings (for resume checks)."""
        d = self.to_json()
        return {**d, **d["options"]}

    def apply_saved(self, saved: Mapping[str, Any]) -> None:
        """Take the defining settings of a saved run (``--resume``)."""
        self.class_names = list(saved["class_names"])
        self.class_prompts = list(saved["class_prompts"])
        self.method = str(saved["method"])
        self.options = dict(saved["options"])
        self.iters, self.batch, self.crop = int(saved["iters"]), int(saved["batch"]), int(saved["crop"])
        self.scales = tuple(float(s) for s in saved["scales"])
        self.lr, self.weight_decay = float(saved["lr"]), float(saved["weight_decay"])
        self.warmup, self.seed = float(saved["warmup"]), int(saved["seed"])


def scheduled_lr(base_lr: float, iteration: int, iters: int, warmup: float) -> float:
    """Cosine decay from ``base_lr`` to 1% of it over ``iters``, its first ``warmup`` fraction
    scaled by a linear warm-up from 1e-6 (mmseg's ``CosineAnnealing`` + linear warm-up)."""
    min_lr = base_lr * MIN_LR_FRACTION
    frac = min(max(iteration, 0), iters) / max(iters, 1)
    lr = min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))
    warm = int(round(warmup * iters))
    if iteration < warm:
        lr *= 1.0 - (1.0 - iteration / warm) * (1.0 - WARMUP_START)
    return lr


def load_refine_resume(out: Path) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` continues from (None when RUN has none)."""
    last = Path(out) / LAST
    if not last.exists():
        return None
    ckpt = read_checkpoint(last, "--resume")
    if not str(ckpt.get("kind", "")).startswith("refiner.") or "optimizer" not in ckpt or "train_config" not in ckpt:
        raise ConfigError(f"--resume: {last} is not a training checkpoint of refine train")
    method_of_kind(ckpt["kind"])
    return ckpt


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


# -- training ------------------------------------------------------------------------------------
class RefinerTrainer:
    """One run of ``refine train``: set up from options or from ``last.pt``, then :meth:`run`.

    ``labels`` maps image keys to mask values; None on ``--resume`` means: the labels saved in the run.
    """

    def __init__(
        self,
        cfg: RefineConfig,
        clip: CLIP,
        weights: ResolvedWeights,
        device: torch.device,
        labels: LabelIndex | None,
        *,
        resume: bool = False,
        reporter: Reporter | None = None,
    ) -> None:
        self.cfg, self.device, self.weights = cfg, device, weights
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
            ckpt = load_refine_resume(out)
            cfg.apply_saved(ckpt["train_config"])
        elif resume:
            self.reporter.message(f"nothing to resume in {out}: starting a new run")
        self.model_class = refiner_class(cfg.method)
        multiple = self.model_class.crop_multiple
        if cfg.crop < multiple or cfg.crop % multiple:
            raise ConfigError(f"--crop must be a multiple of {multiple} for {cfg.method}; got {cfg.crop}")
        if labels is None:
            if ckpt is None:
                raise ConfigError("give exactly one of --labels FILE or --annotations DIR")
            self.image_labels: ImageLabels = {k: list(v) for k, v in ckpt.get("image_labels", {}).items()}
        else:
            self.image_labels = labels_for_images(labels, cfg.images, cfg.class_names)
        if not self.image_labels:
            raise ConfigError(f"no image in {cfg.images} has labels")
        self.pairs = find_pairs(
            cfg.images, cfg.seeds, skip_missing=cfg.skip_missing, what="SEEDS", keys=self.image_labels
        )
        check_pair_sizes(self.pairs)
        self.num_classes = len(cfg.class_names) + 1
        self.clip = clip
        if ckpt is not None:
            self._setup_from_checkpoint(ckpt)
        else:
            self._setup_fresh()
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(out)

    # -- set-up --
    def _optimizer(self) -> torch.optim.AdamW:
        return torch.optim.AdamW(self.model.learnable_parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    def _setup_fresh(self) -> None:
        seed_everything(self.cfg.seed)
        unknown = sorted(set(self.cfg.options) - set(self.model_class.OPTIONS))
        if unknown:
            raise ConfigError(f"{', '.join(unknown)}: not a setting of the {self.cfg.method} refiner")
        options = self.cfg.options = {**self.model_class.OPTIONS, **self.cfg.options}
        prompts = self.cfg.class_prompts or list(self.cfg.class_names)
        self.model = self.model_class.create(self.clip, self.cfg.class_names, prompts, options)
        self.model.to(self.device)
        self.optimizer = self._optimizer()
        truncate_jsonl(self.cfg.out / METRICS, 0)

    def _setup_from_checkpoint(self, ckpt: dict[str, Any]) -> None:
        check_clip_weights(ckpt["model_config"], self.weights, f"the run in {self.cfg.out}")
        self.model = self.model_class.from_config(self.clip, ckpt["model_config"])
        self.model.load_learnable_state_dict(ckpt["model"])
        self.model.to(self.device)
        self.optimizer = self._optimizer()
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"--resume: optimizer state does not fit the model ({exc})") from None
        set_rng_state(ckpt["rng"])
        st = self.state
        st.iteration = int(ckpt["iteration"])
        st.seconds = float(ckpt.get("seconds", 0.0))
        st.last_saved = st.iteration
        if ckpt.get("pairs") is not None and ckpt["pairs"] != len(self.pairs):
            self.reporter.message(
                f"[yellow]warning:[/] the run started with {ckpt['pairs']} image/seed pairs, now {len(self.pairs)}: "
                "the resumed run will not repeat the original exactly"
            )
        truncate_jsonl(self.cfg.out / METRICS, st.iteration)
        self.reporter.message(f"resuming {self.cfg.out} at iteration {st.iteration} of {self.cfg.iters}")

    # -- checkpoints --
    def model_config(self) -> dict[str, Any]:
        return {
            **self.model.model_config(),
            "clip_weights": {"path": str(Path(self.weights.path).resolve()), "sha256": self.weights.sha256},
        }

    def save(self) -> None:
        st, cfg = self.state, self.cfg
        pair_keys = {p.key for p in self.pairs}
        save_checkpoint(
            cfg.out / LAST,
            make_checkpoint(
                self.model.kind,
                self.model_config(),
                cfg.class_names,
                self.model.learnable_state_dict(),
                iteration=st.iteration,
                max_iter=cfg.iters,
                image_labels={k: v for k, v in self.image_labels.items() if k in pair_keys},
                optimizer=self.optimizer.state_dict(),
                rng=rng_state(),
                train_config=cfg.to_json(),
                seconds=st.seconds,
                pairs=len(self.pairs),
            ),
        )
        st.last_saved = st.iteration
        self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        ran = st.iteration - st.session_start_iter
        parts = getattr(self, "_last_parts", {})
        summary = {
            "command": "refine train",
            "wsss_label": __version__,
            "torch": torch.__version__,
            "status": st.status,
            "kind": self.model.kind,
            "model_config": self.model_config(),
            "learnable_parameters": sum(p.numel() for p in self.model.learnable_parameters()),
            "config": cfg.to_json(),
            "pairs": len(self.pairs),
            "labelled_images": len(self.image_labels),
            "device": str(self.device),
            "iteration": st.iteration,
            "max_iter": cfg.iters,
            "seconds": round(st.seconds, 3),
            "this_session": {
                "iterations": ran,
                "seconds": round(st.session_seconds, 3),
                "seconds_per_iteration": round(st.session_seconds / ran, 4) if ran else None,
                "iterations_per_second": round(ran / st.session_seconds, 4) if ran and st.session_seconds else None,
            },
            "final_loss": round(float(np.mean(st.losses[-20:])), 6) if st.losses else None,
            "final_loss_parts": {k: round(v, 6) for k, v in parts.items()},
            "peak_memory": peak_memory(self.device),
            "files": {"last": LAST, "metrics": METRICS, "curve": CURVE},
        }
        write_json(cfg.out / RUN, summary)
        return summary

    # -- the loop --
    def _loader(self) -> DataLoader:
        cfg = self.cfg
        labels = [self.image_labels[p.key] for p in self.pairs]
        dataset = RefineDataset(
            self.pairs, labels, self.num_classes, self.model.normalization, cfg.scales, cfg.crop, cfg.seed
        )
        sampler = TrainBatches(len(self.pairs), cfg.batch, cfg.seed, self.state.iteration, cfg.iters)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if cfg.workers > 0 else None,
        )

    def step(self, batch: Mapping[str, Any]) -> tuple[float, dict[str, float]]:
        """One optimisation step on ``batch``; returns the loss and its parts."""
        images = batch["image"].to(self.device, non_blocking=True)
        logits = self.model(images)
        loss, parts = self.model.training_loss(logits, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return value, parts

    def run(self) -> dict[str, Any]:
        """Train to ``--iters``; returns the run.json summary. Ctrl-C saves last.pt, then re-raises."""
        cfg, st = self.cfg, self.state
        st.session_start_iter = st.iteration
        self.reporter.start(st.iteration, cfg.iters)
        self.model.train()
        started = time.perf_counter()
        base_seconds = st.seconds
        diverged = False
        try:
            with open(cfg.out / METRICS, "a") as metrics:
                for batch in self._loader():
                    errors = [e for e in batch["error"] if e]
                    if errors:
                        raise ConfigError(errors[0])
                    lr = scheduled_lr(cfg.lr, st.iteration, cfg.iters, cfg.warmup)
                    set_lr(self.optimizer, lr)
                    try:
                        value, parts = self.step(batch)
                    except FloatingPointError as exc:
                        diverged = True
                        raise ConfigError(
                            f"the loss became {exc} at iteration {st.iteration + 1}; lower --lr and start again"
                        ) from None
                    st.iteration += 1
                    st.session_seconds = time.perf_counter() - started
                    st.seconds = base_seconds + st.session_seconds
                    st.losses.append(value)
                    self._last_parts = parts
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
                self.reporter.message(
                    f"saved {cfg.out / LAST} at iteration {st.iteration}; rerun with --resume to continue"
                )
            write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
            raise
        except RuntimeError as exc:
            message = out_of_memory_message(exc, self.device)
            if message is None:
                raise
            raise ConfigError(f"{message} at --batch {cfg.batch} --crop {cfg.crop}; lower them") from None
        if st.iteration >= cfg.iters and st.last_saved != st.iteration:
            st.status = "finished"
            self.save()
        st.status = "finished"
        write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
        return self.write_summary()


# -- prediction ----------------------------------------------------------------------------------
class RefinerPredictor:
    """A trained refiner as a :class:`clipseg_cli.segmentation.predict.Predictor` that makes pseudo
    masks: ``image_labels`` gives each image's labels, so predict applies eq. 14."""

    def __init__(self, model: RefinerModel, class_names: list[str], device: torch.device, options: InferenceOptions,
                 labels: ImageLabels) -> None:  # fmt: skip
        self.model = model.to(device).eval()
        self.class_names = class_names
        self.device = device
        self.options = options
        self.labels = labels

    def probabilities(self, image: np.ndarray, labels: Sequence[int] | None = None) -> np.ndarray:
        return multiscale_probs(
            self.model, self.model.normalization, image, self.device, self.options.scales, self.options.flip
        )

    def image_labels(self, key: str) -> list[int] | None:
        return self.labels.get(key)


def build_refiner(ckpt: Mapping[str, Any], clip: CLIP) -> RefinerModel:
    """The refiner of a checkpoint on ``clip``, weights loaded; ConfigError (one line) if they do not fit."""
    method = method_of_kind(str(ckpt["kind"]))
    try:
        model = refiner_class(method).from_config(clip, ckpt["model_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"checkpoint does not match its model_config ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    model.load_learnable_state_dict(ckpt["model"])
    return model


def load_refiner_predictor(ckpt: dict[str, Any], device: torch.device, options: InferenceOptions) -> RefinerPredictor:
    """``wsss-label predict`` on a refiner checkpoint: the CLIP it was trained with (its recorded
    file, else $WSSS_LABEL_WEIGHTS or the cached ViT-B/16), the training images' labels for eq. 14."""
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.clip.pretrained import resolve_weights

    resolved = resolve_weights(recorded_weights(ckpt["model_config"]))
    check_clip_weights(ckpt["model_config"], resolved, "the checkpoint")
    model = build_refiner(ckpt, load_clip(resolved.path, device))
    labels = {str(k): [int(v) for v in vals] for k, vals in (ckpt.get("image_labels") or {}).items()}
    return RefinerPredictor(model, list(ckpt["class_names"]), device, options, labels)
