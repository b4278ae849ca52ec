"""`wsss-label train-cam vitpcm`: ViT-PCM (patch-class mapping, global max pooling, HV-BiLSTM,
equivariance branch) trained from image-level labels; masks with `wsss-label predict`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from clipseg_cli.cli.console import console, fail, handle_errors
from clipseg_cli.cli import conventions as cv
from clipseg_cli.errors import EXIT_OK, EXIT_USAGE, ConfigError

# option name -> VitPcmConfig field, for the settings --resume keeps from the run.
_DEFINING_OPTIONS = {
    "classes": "class_names", "backbone": "backbone", "size": "size", "epochs": "epochs", "iters": "iters", "batch": "batch",
    "frozen_epochs": "frozen_epochs", "lr": "lr", "lr_finetune": "lr_finetune", "unfreeze": "unfreeze",
    "lstm_hidden": "lstm_hidden", "l2": "l2", "et_weight": "et_weight", "predict_size": "predict_size", "seed": "seed",
}  # fmt: skip


def register(group: typer.Typer) -> None:
    cv.command(group, "vitpcm", vitpcm, no_args_is_help=True)


def vitpcm(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Training images (folder, searched recursively)."),
    labels: Path | None = cv.labels_option(" On --resume: default the run's."),
    annotations: Path | None = cv.annotations_option(),
    classes: str = cv.classes_option(),
    out: Path = cv.out_option("Run folder: last.pt, metrics.jsonl, loss.png, run.json."),
    backbone: str = typer.Option(
        "clip", "--backbone", metavar="clip|FILE", help="clip: our CLIP's image tower; FILE: a timm-layout ImageNet ViT state dict."
    ),
    weights: Path | None = cv.weights_option("CLIP checkpoint for --backbone clip"),
    size: int = typer.Option(384, "--size", help="Training images are resized to SIZE x SIZE (a multiple of twice the patch size)."),
    epochs: int = typer.Option(10, "--epochs", help="Training length in passes over the labelled images (this method's unit)."),
    iters: Optional[int] = cv.iters_option(None, " Instead of --epochs, for the same unit as the other training commands."),
    batch: int = cv.batch_size_option(8, " The mosaic branch groups them by 4."),
    frozen_epochs: int = typer.Option(2, "--frozen-epochs", help="First epochs with the backbone frozen, at --lr."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate while the backbone is frozen."),
    lr_finetune: float = typer.Option(1e-4, "--lr-finetune", help="Adam learning rate once the last blocks train."),
    unfreeze: int = typer.Option(4, "--unfreeze", help="Last backbone blocks trained after --frozen-epochs (0: never)."),
    lstm_hidden: int = typer.Option(256, "--lstm-hidden", help="Hidden units per direction of each BiLSTM."),
    l2: float = typer.Option(0.1, "--l2", help="L2 regularisation of the patch classifier's weights."),
    et_weight: float = typer.Option(1.0, "--et-weight", help="Weight of the equivariance loss (0: no second branch)."),
    predict_size: int = typer.Option(960, "--predict-size", help="Side images are scaled to by predict (960: a 60x60 grid at /16)."),
    resume: bool = cv.resume_option(),
    device: str = cv.device_option(),
    save_every: int = cv.save_every_option(500),
    workers: int = cv.data_workers_option(),
    seed: int = cv.seed_option(),
) -> None:
    """Train ViT-PCM (ECCV 2022) from image-level labels: ViT patch tokens -> HV-BiLSTM -> per-patch softmax over background + classes, global max pooling, multi-label BCE, equivariance to affine transforms and 2x2 mosaics. Masks: `wsss-label predict IMAGES --checkpoint RUN/last.pt`."""
    explicit = [
        n
        for n in _DEFINING_OPTIONS
        if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"
    ]
    if "iters" in explicit and "epochs" in explicit:
        raise fail("give --iters or --epochs, not both", EXIT_USAGE)
    raise typer.Exit(
        _run(
            images, labels, annotations, classes, out, backbone, weights, size, epochs, iters, batch, frozen_epochs, lr,
            lr_finetune, unfreeze, lstm_hidden, l2, et_weight, predict_size, resume, device, save_every, workers, seed,
            explicit,
        )
    )  # fmt: skip


@handle_errors(
    interrupted="interrupted; training state saved in last.pt, continue with --resume"
)
def _run(
    images: Path, labels: Path | None, annotations: Path | None, classes: str, out: Path, backbone: str,
    weights: Path | None, size: int, epochs: int, iters: Optional[int], batch: int, frozen_epochs: int, lr: float, lr_finetune: float,
    unfreeze: int, lstm_hidden: int, l2: float, et_weight: float, predict_size: int, resume: bool, device: str,
    save_every: int, workers: int, seed: int, explicit: list[str],
) -> int:  # fmt: skip
    from clipseg_cli.cam_generators.vit_backbone import build_backbone
    from clipseg_cli.cam_generators.vitpcm import (
        VitPcmConfig,
        VitPcmTrainer,
        load_resume,
    )
    from clipseg_cli.cli.training_bar import TrainingReporter, training_progress
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.device import resolve_device
    from clipseg_cli.refiners.base import read_label_source
    from clipseg_cli.segmentation.train import resume_conflicts

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such folder")
    for name, value, low in (
        ("--size", size, 32), ("--epochs", epochs, 1), ("--iters", 1 if iters is None else iters, 1), ("--batch-size", batch, 1), ("--frozen-epochs", frozen_epochs, 0),
        ("--unfreeze", unfreeze, 0), ("--lstm-hidden", lstm_hidden, 1), ("--predict-size", predict_size, 32),
        ("--save-every", save_every, 1),
    ):  # fmt: skip
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    for name, value in (("--lr", lr), ("--lr-finetune", lr_finetune)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    for name, value in (("--l2", l2), ("--et-weight", et_weight)):
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
    if backbone != "clip" and not Path(backbone).is_file():
        raise ConfigError(f"--backbone {backbone}: neither 'clip' nor a file")
    class_set = load_class_set(classes)
    torch_device = resolve_device(device)
    if workers < 0:
        workers = 0 if torch_device.type == "cpu" else min(4, os.cpu_count() or 1)
    cfg = VitPcmConfig(
        images=images, out=out, class_names=list(class_set.classes), backbone=backbone,
        clip_weights=str(weights) if weights else None, size=size, epochs=epochs, batch=batch,
        iters=iters, frozen_epochs=frozen_epochs, lr=lr, lr_finetune=lr_finetune, unfreeze=unfreeze, lstm_hidden=lstm_hidden,
        l2=l2, et_weight=et_weight, predict_size=predict_size, seed=seed, save_every=save_every, workers=workers,
    )  # fmt: skip
    saved = load_resume(out) if resume else None
    index = (
        None
        if saved is not None and labels is None and annotations is None
        else read_label_source(labels, annotations)
    )
    vit = None
    if saved is not None:
        conflicts = resume_conflicts(
            saved["train_config"],
            cfg.to_json(),
            [_DEFINING_OPTIONS[n] for n in explicit],
        )
        if conflicts:
            raise ConfigError(
                "--resume continues the run as it was started; these differ: " + "; ".join(conflicts)
                + ". Drop them, or train into a new --out"
            )  # fmt: skip
    elif not (out / "last.pt").exists():
        try:
            vit = build_backbone(backbone, weights, torch_device)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError(
                f"--backbone {backbone}: {str(exc).splitlines()[0][:160]}"
            ) from None
    with training_progress() as progress:
        reporter = TrainingReporter(progress)
        trainer = VitPcmTrainer(
            cfg, torch_device, index, backbone=vit, resume=resume, reporter=reporter
        )
        reporter.message(
            f"vitpcm on {torch_device}: {len(trainer.keys)} labelled images, {len(cfg.class_names)} classes, "
            f"{trainer.iters} iterations ({trainer.iters_per_epoch} per epoch, {trainer.frozen_iters} with the backbone frozen)"
        )
        summary = trainer.run()
    console.print(
        f"done: {summary['iteration']} iterations, final loss {summary['final_loss']} -> {out}"
    )
    return EXIT_OK
