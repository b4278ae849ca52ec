"""The training loop of ``wsss-label retrain``: checkpoints, exact resume, metrics, validation.

Files in RUN (``--out``)::

    last.pt        latest checkpoint (model, optimizer, iteration, RNG states), every --save-every
                   iterations, at the end, and on Ctrl-C; always written atomically
    best.pt        model of the best --val mIoU (model only)
    metrics.jsonl  one line per iteration: {"iteration", "loss", "lr", "seconds"}
    val.jsonl      one line per validation: {"iteration", "miou", "pixel_accuracy", "iou"}
    loss.png       loss curve (raw and smoothed) with the learning rate
    run.json       summary: settings, iterations, speed, peak memory, validation, status
"""

from __future__ import annotations

import io
import json
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from clipseg_cli import __version__
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import remove_stale_parts, write_bytes, write_json
from clipseg_cli.segmentation.checkpoint import (
    make_checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from clipseg_cli.segmentation.dataset import PseudoMaskDataset, TrainBatches, check_pair_sizes, find_pairs
from clipseg_cli.segmentation.deeplab import (
    DEFAULT_ARCH,
    IMAGENET_NORM,
    DeepLabV2,
    Normalization,
    build_deeplabv2,
    model_config,
)
from clipseg_cli.segmentation.init_weights import apply_init, read_init
from clipseg_cli.segmentation.losses import balanced_ce, confidence_guided_ce
from clipseg_cli.segmentation.predict import build_from_checkpoint, multiscale_probs
from clipseg_cli.segmentation.schedule import build_optimizer, poly_lr, set_lr
from clipseg_cli.segmentation.validate import evaluate_pairs

LAST, BEST, METRICS, VAL, CURVE, RUN = "last.pt", "best.pt", "metrics.jsonl", "val.jsonl", "loss.png", "run.json"


@dataclass
class TrainConfig:
    """Everything ``retrain`` was asked for. ``DEFINING`` fields fix the run; ``--resume`` keeps them."""

    images: Path
    masks: Path
    out: Path
    class_names: list[str]
    arch: str = DEFAULT_ARCH
    init: Path | None = None
    iters: int = 20000
    batch: int = 10
    crop: int = 321
    scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)
    lr: float = 2e-4
    power: float = 0.9
    balanced: bool = False
    seed: int = 0
    save_every: int = 1000
    workers: int = 0
    val_images: Path | None = None
    val_gt: Path | None = None
    skip_missing: bool = False

    DEFINING = ("class_names", "arch", "init", "iters", "batch", "crop", "scales", "lr", "power", "balanced", "seed")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    def defining(self) -> dict[str, Any]:
        d = self.to_json()
        return {k: d[k] for k in self.DEFINING}


class Reporter(Protocol):
    def message(self, text: str) -> None: ...
    def start(self, done: int, total: int) -> None: ...
    def step(self, iteration: int, loss: float, lr: float, it_per_s: float) -> None: ...


class QuietReporter:
    """A Reporter that says nothing (library use, tests)."""

    def message(self, text: str) -> None:
        pass

    def start(self, done: int, total: int) -> None:
        pass

    def step(self, iteration: int, loss: float, lr: float, it_per_s: float) -> None:
        pass


@dataclass
class RunState:
    iteration: int = 0
    seconds: float = 0.0
    best: dict[str, Any] | None = None
    last_val: dict[str, Any] | None = None
    last_saved: int = -1
    session_start_iter: int = 0
    session_seconds: float = 0.0
    status: str = "running"
    losses: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def truncate_jsonl(path: Path, upto: int) -> None:
    """Keep the lines of ``path`` whose iteration is <= ``upto`` (what a resumed run continues from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iteration"] <= upto:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_bytes(path, ("\n".join(kept) + "\n").encode() if kept else b"")


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def write_loss_curve(metrics_path: Path, dest: Path) -> None:
    """Loss per iteration (raw and moving average) and the learning rate, as a PNG (atomic)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = _read_metrics(metrics_path)
    if not rows:
        return
    it = np.array([r["iteration"] for r in rows])
    loss = np.array([r["loss"] for r in rows], dtype=np.float64)
    lr = np.array([r["lr"] for r in rows], dtype=np.float64)
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(it, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    window = max(1, min(50, len(loss) // 10))
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(it[window - 1 :], smooth, color="tab:blue", linewidth=1.5, label=f"mean of {window}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right")
    ax2 = ax.twinx()
    ax2.plot(it, lr, color="tab:orange", linewidth=1.0)
    ax2.set_ylabel("lr (backbone)", color="tab:orange")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(dest, buf.getvalue())


def peak_memory(device: torch.device) -> dict[str, float]:
    peak = {"rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}
    if device.type == "cuda":
        peak["cuda_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        peak["cuda_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return peak


def worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def load_resume(cfg: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint ``--resume`` continues from (None when RUN has none)."""
    last = cfg.out / LAST
    if not last.exists():
        return None
    ckpt = read_checkpoint(last, "--resume")
    if ckpt.get("kind") != "deeplabv2" or "optimizer" not in ckpt or "train_config" not in ckpt:
        raise ConfigError(f"--resume: {last} is not a training checkpoint of retrain")
    return ckpt


class Trainer:
    """One run of ``retrain``: set up from flags or from ``last.pt``, then :meth:`run`."""

    def __init__(self, cfg: TrainConfig, device: torch.device, *, resume: bool = False, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.reporter = reporter or QuietReporter()
        self.state = RunState()
        out = cfg.out
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        ckpt = None
        if (out / LAST).exists():
            if not resume:
                raise ConfigError(f"{out} already holds a training run ({LAST}); pass --resume to continue it or choose another --out")
            ckpt = load_resume(cfg)
        elif resume:
            self.reporter.message(f"nothing to resume in {out}: starting a new run")
        self.pairs = find_pairs(cfg.images, cfg.masks, skip_missing=cfg.skip_missing)
        check_pair_sizes(self.pairs)
        self.val_pairs = []
        if cfg.val_images is not None and cfg.val_gt is not None:
            self.val_pairs = find_pairs(cfg.val_images, cfg.val_gt, skip_missing=True, what="--val GT")
            check_pair_sizes(self.val_pairs)
        if cfg.crop < 8:
            raise ConfigError("--crop must be at least 8 pixels")
        self.num_classes = len(cfg.class_names) + 1
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(out)
        if ckpt is not None:
            self._setup_from_checkpoint(ckpt)
        else:
            self._setup_fresh()
        self.loss_fn = balanced_ce if cfg.balanced else confidence_guided_ce

    # -- set-up ---------------------------------------------------------------------------------
    def _setup_fresh(self) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        if cfg.init is not None:
            init = read_init(cfg.init)
            model = build_deeplabv2(cfg.arch, self.num_classes, init.style)
            self.init_note = apply_init(model, init, cfg.arch)
            model.freeze_bn()
            self.norm: Normalization = init.norm
        else:
            model = build_deeplabv2(cfg.arch, self.num_classes)
            self.init_note = "random init (no --init): expect far lower accuracy than from pre-trained weights"
            self.reporter.message(f"[yellow]warning:[/] {self.init_note}")
            self.norm = IMAGENET_NORM
        self.style = model.backbone.style
        self.model: DeepLabV2 = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.lr)
        for name in (METRICS, VAL):
            truncate_jsonl(cfg.out / name, 0)

    def _setup_from_checkpoint(self, ckpt: dict[str, Any]) -> None:
        saved = ckpt["train_config"]
        cfg = self.cfg
        cfg.class_names = list(saved["class_names"])
        cfg.arch = saved["arch"]
        cfg.init = Path(saved["init"]) if saved["init"] else None
        cfg.iters, cfg.batch, cfg.crop = int(saved["iters"]), int(saved["batch"]), int(saved["crop"])
        cfg.scales = tuple(float(s) for s in saved["scales"])
        cfg.lr, cfg.power, cfg.balanced, cfg.seed = float(saved["lr"]), float(saved["power"]), bool(saved["balanced"]), int(saved["seed"])
        self.num_classes = len(cfg.class_names) + 1
        model, self.norm = build_from_checkpoint(ckpt)
        if ckpt.get("bn_frozen"):
            model.freeze_bn()
        self.style = model.backbone.style
        self.init_note = ckpt.get("init_note", "")
        self.model = model.to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.lr)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"--resume: optimizer state does not fit the model ({exc})") from None
        set_rng_state(ckpt["rng"])
        st = self.state
        st.iteration = int(ckpt["iteration"])
        st.seconds = float(ckpt.get("seconds", 0.0))
        st.best = ckpt.get("best")
        st.last_val = ckpt.get("last_val")
        st.last_saved = st.iteration
        n_before = ckpt.get("pairs")
        if n_before is not None and n_before != len(self.pairs):
            self.reporter.message(
                f"[yellow]warning:[/] the run started with {n_before} image/mask pairs, now {len(self.pairs)}: "
                "the resumed run will not repeat the original exactly"
            )
        for name in (METRICS, VAL):
            truncate_jsonl(cfg.out / name, st.iteration)
        self.reporter.message(f"resuming {cfg.out} at iteration {st.iteration} of {cfg.iters}")

    # -- checkpoints ----------------------------------------------------------------------------
    def _model_config(self) -> dict[str, Any]:
        return model_config(self.cfg.arch, self.num_classes, self.style, self.norm)

    def _validate(self) -> dict[str, Any]:
        self.model.eval()
        try:
            result = evaluate_pairs(
                lambda img: multiscale_probs(self.model, self.norm, img, self.device),
                self.val_pairs,
                self.num_classes,
                self.cfg.class_names,
            )
        finally:
            self.model.train()
        return result

    def save(self, with_val: bool = True) -> None:
        """Validate (when --val), then write last.pt (and best.pt on a new best mIoU) atomically."""
        st, cfg = self.state, self.cfg
        if with_val and self.val_pairs:
            result = self._validate()
            row = {"iteration": st.iteration, **result}
            with open(cfg.out / VAL, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            st.last_val = row
            miou = result["miou"]
            self.reporter.message(f"iteration {st.iteration}: val mIoU {miou if miou is None else round(100 * miou, 2)}")
            if miou is not None and (st.best is None or miou > st.best["miou"]):
                st.best = {"iteration": st.iteration, "miou": miou}
                save_checkpoint(
                    cfg.out / BEST,
                    make_checkpoint("deeplabv2", self._model_config(), cfg.class_names, self.model.state_dict(), iteration=st.iteration, max_iter=cfg.iters, val=row),
                )
        save_checkpoint(
            cfg.out / LAST,
            make_checkpoint(
                "deeplabv2",
                self._model_config(),
                cfg.class_names,
                self.model.state_dict(),
                iteration=st.iteration,
                max_iter=cfg.iters,
                optimizer=self.optimizer.state_dict(),
                rng=rng_state(),
                train_config=cfg.to_json(),
                seconds=st.seconds,
                bn_frozen=self.model.bn_frozen,
                init_note=self.init_note,
                best=st.best,
                last_val=st.last_val,
                pairs=len(self.pairs),
            ),
        )
        st.last_saved = st.iteration
        self.write_summary()

    def write_summary(self) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        ran = st.iteration - st.session_start_iter
        summary = {
            "command": "retrain",
            "wsss_label": __version__,
            "torch": torch.__version__,
            "status": st.status,
            "kind": "deeplabv2",
            "model_config": self._model_config(),
            "init": self.init_note,
            "bn_frozen": self.model.bn_frozen,
            "config": cfg.to_json(),
            "pairs": len(self.pairs),
            "val_pairs": len(self.val_pairs),
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
            "peak_memory": peak_memory(self.device),
            "val": {"last": st.last_val, "best": st.best},
            "files": {"last": LAST, "best": BEST if st.best else None, "metrics": METRICS, "curve": CURVE},
        }
        write_json(self.cfg.out / RUN, summary)
        return summary

    # -- the loop -------------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        cfg = self.cfg
        dataset = PseudoMaskDataset(self.pairs, self.num_classes, self.norm, cfg.scales, cfg.crop, cfg.seed)
        sampler = TrainBatches(len(self.pairs), cfg.batch, cfg.seed, self.state.iteration, cfg.iters)
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=worker_init if cfg.workers > 0 else None,
        )

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
                    lr = poly_lr(cfg.lr, st.iteration, cfg.iters, cfg.power)
                    set_lr(self.optimizer, lr)
                    images = batch["image"].to(self.device, non_blocking=True)
                    masks = batch["mask"].to(self.device, non_blocking=True)
                    loss = self.loss_fn(self.model(images), masks)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        diverged = True
                        raise ConfigError(f"the loss became {value} at iteration {st.iteration + 1}; lower --lr and start again")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    st.iteration += 1
                    st.session_seconds = time.perf_counter() - started
                    st.seconds = base_seconds + st.session_seconds
                    st.losses.append(value)
                    metrics.write(json.dumps({"iteration": st.iteration, "loss": value, "lr": lr, "seconds": round(st.seconds, 3)}) + "\n")
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
                self.save(with_val=False)
                self.reporter.message(f"saved {cfg.out / LAST} at iteration {st.iteration}; rerun with --resume to continue")
            write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
            raise
        except RuntimeError as exc:
            message = out_of_memory_message(exc, self.device)
            if message is None:
                raise
            raise ConfigError(f"{message} at --batch {cfg.batch} --crop {cfg.crop}; lower them") from None
        if st.iteration >= cfg.iters and st.last_saved != st.iteration:
            st.status = "finished"
            self.save()  # already complete before this call (e.g. --resume of a finished run)
        st.status = "finished"
        write_loss_curve(cfg.out / METRICS, cfg.out / CURVE)
        return self.write_summary()


def out_of_memory_message(exc: BaseException, device: torch.device) -> str | None:
    """A one-line description when ``exc`` is an out-of-memory error, else None."""
    text = str(exc)
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or "out of memory" in text or "can't allocate memory" in text:
        return f"out of {'GPU' if device.type == 'cuda' else 'CPU'} memory"
    return None


def train(cfg: TrainConfig, device: torch.device, *, resume: bool = False, reporter: Reporter | None = None) -> dict[str, Any]:
    """Set up and run one ``retrain``; returns the run.json summary."""
    return Trainer(cfg, device, resume=resume, reporter=reporter).run()


def resume_conflicts(saved: dict[str, Any], given: dict[str, Any], explicit: Sequence[str]) -> list[str]:
    """Defining settings given explicitly on the command line that differ from the saved run."""
    out = []
    for name in explicit:
        if name in saved and name in given and saved[name] != given[name]:
            out.append(f"{name} (run: {saved[name]!r}, asked: {given[name]!r})")
    return out
