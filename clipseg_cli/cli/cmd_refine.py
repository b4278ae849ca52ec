"""`wsss-label refine train|predict`: learned refiners (WeakCLIP) trained on the main command's masks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer

from clipseg_cli.cli.cmd_retrain import file_digest, parse_scales, predict_with_progress
from clipseg_cli.cli.training_bar import TrainingReporter, training_progress
from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.cli import conventions as cv
from clipseg_cli.refiners import REFINERS
from clipseg_cli.errors import EXIT_OK, ConfigError

# train option name -> RefineConfig.flat() key, for the settings --resume keeps from the run.
_DEFINING_OPTIONS = {
    "classes": "class_names", "method": "method", "iters": "iters", "batch": "batch", "crop": "crop",
    "scales": "scales", "lr": "lr", "weight_decay": "weight_decay", "warmup_iters": "warmup", "warmup": "warmup",
    "seed": "seed",
    "context": "context", "decoder_dim": "decoder_dim",
}  # fmt: skip

refine_app = cv.make_app(
    name="refine",
    help="Learned refiners: train a network on the seed masks of `wsss-label label`, then predict better masks.",
)


def _check_numbers(iters: int, batch: int, crop: int, save_every: int, lr: float, weight_decay: float,
                   warmup: float, context: int, decoder_dim: int) -> None:  # fmt: skip
    for name, value, low in (
        ("--iters", iters, 1), ("--batch-size", batch, 1), ("--crop", crop, 32), ("--save-every", save_every, 1),
        ("--context", context, 1), ("--decoder-dim", decoder_dim, 1),
    ):  # fmt: skip
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if not lr > 0:
        raise ConfigError(f"--lr must be positive, got {lr}")
    if weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {weight_decay}")
    if not 0.0 <= warmup < 1.0:
        raise ConfigError(f"--warmup-iters must be in [0, --iters) (--warmup: a fraction in [0, 1)), got {warmup:g} of --iters")


DEFAULT_WARMUP = 0.075  # of --iters (WeakCLIP's 1500 of 20000)


def _warmup_fraction(warmup_iters: Optional[int], warmup: Optional[float], iters: int) -> float:
    """The warm-up as the fraction of --iters RefineConfig keeps: from --warmup-iters, or the
    deprecated --warmup (a fraction), or the default."""
    if warmup is not None:
        cv.warn_deprecated("--warmup", f"--warmup-iters N (here {round(warmup * iters)})")
        if warmup_iters is not None:
            raise ConfigError("give --warmup-iters only (--warmup is its deprecated form)")
        return warmup
    if warmup_iters is None:
        return DEFAULT_WARMUP
    return warmup_iters / max(1, iters) if warmup_iters >= 0 else -1.0


def train(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Training images (folder, searched recursively)."),
    seeds: Path = typer.Argument(
        ..., help="Seed masks: SEEDS/<rel>.png, or the OUT of `wsss-label label` (its masks/)."
    ),
    labels: Optional[Path] = cv.labels_option(" On --resume: default the run's."),
    annotations: Optional[Path] = cv.annotations_option(),
    classes: str = cv.classes_option(),
    out: Path = cv.out_option("Run folder: last.pt, metrics.jsonl, loss.png, run.json."),
    method: str = typer.Option("weakclip", "--method", metavar="|".join(REFINERS), help="The refiner."),
    weights: Optional[Path] = cv.weights_option(),
    iters: int = cv.iters_option(20000),
    batch: int = cv.batch_size_option(8),
    crop: int = typer.Option(512, "--crop", help="Square training crop in pixels (a multiple of 32)."),
    scales: str = cv.scales_option("0.75,1,1.25,1.5,1.75,2,2.5", "Random rescaling factors, one drawn per image."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (cosine decay to 1% of it)."),
    weight_decay: float = typer.Option(3e-5, "--weight-decay", help="AdamW weight decay."),
    warmup_iters: Optional[int] = cv.warmup_iters_option(None, " Default: 7.5% of --iters."),
    warmup: Optional[float] = cv.deprecated_option(None, "--warmup", "--warmup-iters (--warmup was a fraction of --iters)"),
    context: int = typer.Option(8, "--context", help="Learnable context vectors before each class's tokens."),
    decoder_dim: int = typer.Option(256, "--decoder-dim", help="Channels of the text-guided decoder."),
    resume: bool = cv.resume_option(),
    device: str = cv.device_option(),
    save_every: int = cv.save_every_option(1000),
    workers: int = cv.data_workers_option(),
    seed: int = cv.seed_option(),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Train on the labelled images that have a seed mask instead of stopping."
    ),
) -> None:
    """Train a refiner (WeakCLIP: frozen CLIP, learnable prompt, pyramid adapter, co-attention matching, text-guided decoder) on seed masks with the balanced seeding and boundary losses."""
    explicit = [n for n in _DEFINING_OPTIONS if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"]
    warmup = _warmup_fraction(warmup_iters, warmup, iters)
    raise typer.Exit(
        _run_train(
            images, seeds, labels, annotations, classes, out, method, weights, iters, batch, crop, scales, lr,
            weight_decay, warmup, context, decoder_dim, resume, device, save_every, workers, seed, skip_missing, explicit,
        )
    )  # fmt: skip


@handle_errors(interrupted="interrupted; training state saved in last.pt, continue with --resume")
def _run_train(
    images: Path, seeds: Path, labels: Optional[Path], annotations: Optional[Path], classes: str, out: Path,
    method: str, weights: Optional[Path], iters: int, batch: int, crop: int, scales: str, lr: float,
    weight_decay: float, warmup: float, context: int, decoder_dim: int, resume: bool, device: str,
    save_every: int, workers: int, seed: int, skip_missing: bool, explicit: list[str],
) -> int:  # fmt: skip
    from clipseg_cli.cli.common import load_clip_model
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.device import resolve_device
    from clipseg_cli.refiners import REFINERS
    from clipseg_cli.refiners.base import (
        LAST,
        RefineConfig,
        RefinerTrainer,
        load_refine_resume,
        read_label_source,
        recorded_weights,
        refiner_class,
    )
    from clipseg_cli.segmentation.train import resume_conflicts

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such folder")
    if not seeds.is_dir():
        raise ConfigError(f"SEEDS {seeds}: no such folder")
    if method not in REFINERS:
        raise ConfigError(f"unknown --method {method!r}; available: {', '.join(REFINERS)}")
    _check_numbers(iters, batch, crop, save_every, lr, weight_decay, warmup, context, decoder_dim)
    # Method-specific options: those the method has; giving one it does not have is an error.
    method_options = refiner_class(method).OPTIONS
    given = {"context": context, "decoder_dim": decoder_dim}
    for name in given:
        if name not in method_options and name in explicit:
            raise ConfigError(f"--{name.replace('_', '-')} is not a setting of the {method} refiner")
    options = {k: v for k, v in given.items() if k in method_options}
    class_set = load_class_set(classes)
    torch_device = resolve_device(device)
    if workers < 0:
        workers = 0 if torch_device.type == "cpu" else min(4, os.cpu_count() or 1)
    cfg = RefineConfig(
        images=images, seeds=seeds, out=out, class_names=list(class_set.classes), class_prompts=list(class_set.prompts),
        method=method, options=options, iters=iters, batch=batch, crop=crop,
        scales=parse_scales(scales), lr=lr, weight_decay=weight_decay, warmup=warmup, seed=seed,
        save_every=save_every, workers=workers, skip_missing=skip_missing,
    )  # fmt: skip
    saved = load_refine_resume(out) if resume else None
    if saved is None and (out / LAST).exists():
        raise ConfigError(
            f"{out} already holds a training run ({LAST}); pass --resume to continue it or choose another --out"
        )
    index = (
        None if saved is not None and labels is None and annotations is None else read_label_source(labels, annotations)
    )
    if saved is not None:
        saved_cfg = saved["train_config"]
        flat_saved = {**saved_cfg, **saved_cfg.get("options", {})}
        conflicts = resume_conflicts(flat_saved, cfg.flat(), [_DEFINING_OPTIONS[n] for n in explicit])
        if conflicts:
            raise ConfigError(
                "--resume continues the run as it was started; these differ: " + "; ".join(conflicts)
                + ". Drop them, or train into a new --out"
            )  # fmt: skip
        weights = weights or recorded_weights(saved["model_config"])
    clip, resolved = load_clip_model(weights, torch_device)
    with training_progress() as progress:
        reporter = TrainingReporter(progress)
        trainer = RefinerTrainer(cfg, clip, resolved, torch_device, index, resume=resume, reporter=reporter)
        learnable = sum(p.numel() for p in trainer.model.learnable_parameters())
        reporter.message(
            f"{cfg.method} on {torch_device}: {len(trainer.pairs)} image/seed pairs, {len(cfg.class_names)} classes, "
            f"{learnable / 1e6:.2f}M learnable parameters on a frozen CLIP ({resolved.path.name})"
        )
        summary = trainer.run()
    console.print(f"done: {summary['iteration']} iterations, final loss {summary['final_loss']} -> {out}")
    return EXIT_OK


def predict(
    images: Path = typer.Argument(
        ..., help="Images to make pseudo masks for (folder, searched recursively, or one file)."
    ),
    checkpoint: Path = cv.checkpoint_option("RUN/last.pt of `refine train`."),
    labels: Optional[Path] = cv.labels_option(" Default: the training images' labels saved in the checkpoint.", required=False),
    annotations: Optional[Path] = cv.annotations_option(required=False),
    out: Path = cv.out_option("Output folder: masks/<rel>.png and predict.json."),
    scales: str = cv.scales_option("0.75,1,1.5", "Test scales whose softmax is averaged."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Also average horizontally flipped inputs."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Dense CRF on the averaged probabilities."),
    weights: Optional[Path] = cv.weights_option("CLIP checkpoint the refiner was trained on; default: the file recorded in the checkpoint, else as for labelling"),
    device: str = cv.device_option(),
    overwrite: bool = cv.overwrite_option(),
) -> None:
    """Pseudo masks from a trained refiner: argmax of the (multi-scale, flipped, CRF-refined) scores; classes an image is not labelled with become 255 (WeakCLIP's eq. 14)."""
    raise typer.Exit(
        _run_predict(images, checkpoint, labels, annotations, out, scales, flip, crf, weights, device, overwrite)
    )


@handle_errors
def _run_predict(
    images: Path, checkpoint: Path, labels: Optional[Path], annotations: Optional[Path], out: Path, scales: str,
    flip: bool, crf: bool, weights: Optional[Path], device: str, overwrite: bool,
) -> int:  # fmt: skip
    from clipseg_cli.cli.common import load_clip_model
    from clipseg_cli.device import resolve_device
    from clipseg_cli.refiners.base import (
        RefinerPredictor,
        build_refiner,
        check_clip_weights,
        labels_for_images,
        method_of_kind,
        read_label_source,
        recorded_weights,
    )
    from clipseg_cli.segmentation.checkpoint import read_checkpoint
    from clipseg_cli.segmentation.predict import InferenceOptions, check_predict_rerun

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such file or folder")
    options = InferenceOptions(scales=parse_scales(scales), flip=flip)
    torch_device = resolve_device(device)
    settings: dict[str, Any] = {
        "command": "refine predict",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint),
        "scales": list(options.scales),
        "flip": flip,
        "crf": crf,
        "labels_sha256": file_digest(labels or annotations),
    }
    if checkpoint.is_file():  # else reading it says what is wrong
        check_predict_rerun(out, settings, overwrite)
    ckpt = read_checkpoint(checkpoint)
    try:
        method_of_kind(str(ckpt["kind"]))
    except ConfigError as exc:
        raise ConfigError(
            f"--checkpoint {checkpoint}: {exc}; `wsss-label predict` segments with other checkpoints"
        ) from None
    class_names = list(ckpt["class_names"])
    if labels is None and annotations is None:
        image_labels = {str(k): [int(v) for v in vals] for k, vals in (ckpt.get("image_labels") or {}).items()}
        labels_source: Any = f"{checkpoint} (training labels)"
    else:
        image_labels = labels_for_images(read_label_source(labels, annotations), images, class_names)
        labels_source = str(labels or annotations)
    if not image_labels:
        raise ConfigError(f"no image in {images} has labels")
    clip, resolved = load_clip_model(weights or recorded_weights(ckpt["model_config"]), torch_device)
    check_clip_weights(ckpt["model_config"], resolved, f"--checkpoint {checkpoint}")
    try:
        model = build_refiner(ckpt, clip)
    except ConfigError as exc:
        raise ConfigError(f"--checkpoint {checkpoint}: {exc}") from None
    predictor = RefinerPredictor(model, class_names, torch_device, options, image_labels)
    settings.update({
        "kind": ckpt["kind"],
        "class_names": class_names,
        "labels": labels_source,
        "device": str(torch_device),
        "weights": {"path": str(resolved.path), "sha256": resolved.sha256},
    })  # fmt: skip
    return predict_with_progress(
        images, out, predictor, crf=crf, overwrite=overwrite, settings=settings, device=torch_device,
        description="refining",
    )  # fmt: skip


cv.command(refine_app, "train", train, no_args_is_help=True)
cv.command(refine_app, "predict", predict, no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(refine_app, name="refine")
