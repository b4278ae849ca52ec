"""`wsss-label train-cam clims`: CLIMS's CAM network trained with a frozen CLIP as text-driven evaluator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import typer

from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.cli import conventions as cv
from clipseg_cli.errors import EXIT_OK, ConfigError

Arch = Literal["resnet50", "resnet101", "resnet34", "resnet18"]  # cam_generators.clims.ARCHS
Reduction = Literal["mean", "sum"]
# option name -> ClimsConfig.flat() key, for the settings --resume keeps from the run.
_DEFINING = {
    "classes": "class_names", "arch": "arch", "iters": "iters", "batch": "batch", "crop": "crop", "scales": "scales",
    "lr": "lr", "seed": "seed", "alpha": "alpha", "beta": "beta", "gamma": "gamma", "delta": "delta",
    "reduction": "reduction", "clip_size": "clip_size", "bg_threshold": "bg_threshold",
}  # fmt: skip


def train(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Training images (folder, searched recursively)."),
    labels: Path | None = cv.labels_option(" On --resume: default the run's."),
    annotations: Path | None = cv.annotations_option(),
    classes: str = cv.classes_option(),
    out: Path = cv.out_option("Run folder: last.pt, metrics.jsonl, loss.png, run.json."),
    arch: Arch = typer.Option("resnet50", "--arch", help="CAM backbone (resnet50: the paper's)."),
    init: Path | None = typer.Option(None, "--init", metavar="FILE", help="Backbone init: a torchvision-layout ResNet file (e.g. resnet50-*.pth); default random."),
    weights: Path | None = cv.weights_option(),
    iters: int = cv.iters_option(6615, " Default: 10 epochs of VOC train_aug at batch size 16."),
    batch: int = cv.batch_size_option(16),
    crop: int = typer.Option(512, "--crop", help="Square training crop in pixels."),
    scales: str = cv.scales_option("0.7,0.85,1,1.15,1.3", "Random rescaling factors, one drawn per image."),
    lr: float = typer.Option(2.5e-4, "--lr", help="SGD learning rate (1x1 head at 10x), cosine annealing to 0."),
    alpha: float = typer.Option(10.0, "--alpha", help="Weight of L_OTM (eq. 6)."),
    beta: float = typer.Option(25.0, "--beta", help="Weight of L_BTM (eq. 8)."),
    gamma: float = typer.Option(29.5, "--gamma", help="Weight of L_CBS (eq. 10)."),
    delta: float = typer.Option(1.15, "--delta", help="Weight of L_REG (eq. 12)."),
    reduction: Reduction = typer.Option("mean", "--reduction", help="mean: over positive (image, class) pairs, as the authors' code; sum: eqs. 6/8/10 literally, per image."),
    clip_size: int = typer.Option(0, "--clip-size", help="Side CLIP sees the masked images at (0: the checkpoint's, 224)."),
    bg_threshold: float = typer.Option(0.15, "--bg-threshold", help="Background score against max-normalised CAMs, used by predict."),
    resume: bool = cv.resume_option(),
    device: str = cv.device_option(),
    save_every: int = cv.save_every_option(500),
    workers: int = cv.data_workers_option(),
    seed: int = cv.seed_option(),
) -> None:
    """CLIMS (CVPR 2022): train a ResNet CAM network (sigmoid maps, no pooling) with a frozen CLIP as text-driven evaluator (OTM, BTM, CBS, REG losses); predict its masks with `wsss-label predict --checkpoint RUN/last.pt --labels LABELS`."""
    explicit = [n for n in _DEFINING if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"]
    options = {"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta, "reduction": reduction,
               "clip_size": clip_size, "bg_threshold": bg_threshold}  # fmt: skip
    raise typer.Exit(
        _run(images, labels, annotations, classes, out, arch, init, weights, iters, batch, crop, scales, lr, options,
             resume, device, save_every, workers, seed, explicit)
    )  # fmt: skip


@handle_errors(interrupted="interrupted; training state saved in last.pt, continue with --resume")
def _run(images: Path, labels: Path | None, annotations: Path | None, classes: str, out: Path, arch: str,
         init: Path | None, weights: Path | None, iters: int, batch: int, crop: int, scales: str, lr: float,
         options: dict, resume: bool, device: str, save_every: int, workers: int, seed: int, explicit: list[str]) -> int:  # fmt: skip
    from clipseg_cli.cam_generators.clims import (
        ARCHS,
        ClimsConfig,
        ClimsTrainer,
        load_clims_resume,
    )
    from clipseg_cli.cli.cmd_retrain import parse_scales
    from clipseg_cli.cli.common import load_clip_model
    from clipseg_cli.cli.training_bar import TrainingReporter, training_progress
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.device import resolve_device
    from clipseg_cli.refiners.base import read_label_source, recorded_weights
    from clipseg_cli.segmentation.train import LAST, resume_conflicts

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such folder")
    for name, value, low in (("--iters", iters, 1), ("--batch-size", batch, 1), ("--crop", crop, 32), ("--save-every", save_every, 1)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if not lr > 0:
        raise ConfigError(f"--lr must be positive, got {lr}")
    if arch not in ARCHS:
        raise ConfigError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if options["reduction"] not in ("mean", "sum"):
        raise ConfigError(f"--reduction must be mean or sum, got {options['reduction']!r}")
    if init is not None and not init.is_file():
        raise ConfigError(f"--init {init}: no such file")
    class_set = load_class_set(classes)
    torch_device = resolve_device(device)
    if workers < 0:
        workers = 0 if torch_device.type == "cpu" else min(4, os.cpu_count() or 1)
    cfg = ClimsConfig(
        images=images, out=out, class_names=list(class_set.classes), arch=arch, init=init, options=options,
        iters=iters, batch=batch, crop=crop, scales=parse_scales(scales), lr=lr, seed=seed, save_every=save_every,
        workers=workers,
    )  # fmt: skip
    saved = load_clims_resume(out) if resume else None
    if saved is None and (out / LAST).exists():
        raise ConfigError(f"{out} already holds a training run ({LAST}); pass --resume to continue it or choose another --out")
    index = None if saved is not None and labels is None and annotations is None else read_label_source(labels, annotations)
    if saved is not None:
        saved_cfg = saved["train_config"]
        flat_saved = {**saved_cfg, **saved_cfg.get("options", {})}
        conflicts = resume_conflicts(flat_saved, cfg.flat(), [_DEFINING[n] for n in explicit])
        if conflicts:
            raise ConfigError("--resume continues the run as it was started; these differ: " + "; ".join(conflicts))
        weights = weights or recorded_weights(saved["model_config"])
    clip, resolved = load_clip_model(weights, torch_device)
    with training_progress() as progress:
        reporter = TrainingReporter(progress)
        trainer = ClimsTrainer(cfg, clip, resolved, torch_device, index, resume=resume, reporter=reporter)
        reporter.message(
            f"clims {cfg.arch} on {torch_device}: {len(trainer.keys)} labelled images, {len(cfg.class_names)} classes, "
            f"frozen CLIP {resolved.path.name}; init: {trainer.init_note}"
        )
        summary = trainer.run()
    console.print(f"done: {summary['iteration']} iterations, final loss {summary['final_loss']} -> {out}")
    return EXIT_OK


def register(group: typer.Typer) -> None:
    cv.command(group, "clims", train, no_args_is_help=True)
