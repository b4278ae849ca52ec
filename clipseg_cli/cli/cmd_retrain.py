"""`wsss-label retrain` (DeepLabV2 on pseudo masks, confidence-guided loss) and `wsss-label predict`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import typer

from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.progress import Progress, echo, failure_line, loading
from clipseg_cli.cli.training_bar import TrainingReporter, training_progress
from clipseg_cli.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError

Arch = Literal["deeplabv2-resnet101", "deeplabv2-resnet50", "deeplabv2-resnet18"]
# retrain option name -> TrainConfig field, for the settings --resume keeps from the run.
_DEFINING_OPTIONS = {
    "classes": "class_names", "arch": "arch", "init": "init", "iters": "iters", "batch": "batch", "crop": "crop",
    "scales": "scales", "lr": "lr", "power": "power", "balanced": "balanced", "seed": "seed",
}  # fmt: skip


def parse_scales(text: str, option: str = "--scales") -> tuple[float, ...]:
    """``"0.5,0.75,1"`` -> (0.5, 0.75, 1.0); ConfigError unless every value is a number > 0."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated numbers such as 0.5,0.75,1; got {text!r}") from None
    if not values or any(not (0.0 < v <= 8.0) for v in values):
        raise ConfigError(f"{option} values must be in (0, 8]; got {text!r}")
    return values


def retrain(
    ctx: typer.Context,
    images: Path = typer.Argument(..., help="Training images (folder, searched recursively)."),
    masks: Path = typer.Argument(..., help="Pseudo masks: MASKS/<rel>.png, or the OUT of `wsss-label label` (its masks/)."),
    classes: str = cv.classes_option(),
    out: Path = cv.out_option("Run folder: last.pt, best.pt, metrics.jsonl, loss.png, run.json."),
    init: Optional[Path] = typer.Option(None, "--init", metavar="FILE", help="Initial weights: torchvision ResNet .pth, deeplab-pytorch COCO/VOC .pth, or a wsss-label checkpoint. Default: random."),
    arch: Arch = typer.Option("deeplabv2-resnet101", "--arch", help="Network (resnet18: quick runs, tests)."),
    iters: int = cv.iters_option(20000),
    batch: int = cv.batch_size_option(10),
    crop: int = typer.Option(321, "--crop", help="Square training crop in pixels."),
    scales: str = cv.scales_option("0.5,0.75,1,1.25,1.5", "Random rescaling factors, one drawn per image."),
    lr: float = typer.Option(2e-4, "--lr", help="Base learning rate (2e-4 ImageNet init, 2.5e-5 COCO init); ASPP 10x (bias 20x)."),
    power: float = typer.Option(0.9, "--power", help="Poly decay: lr * (1 - it/iters) ** power."),
    balanced: bool = typer.Option(False, "--balanced", help="Class-balanced cross-entropy (the paper's COCO setting)."),
    resume: bool = cv.resume_option(),
    device: str = cv.device_option(),
    val: Optional[tuple[Path, Path]] = typer.Option(None, "--val", metavar="IMAGES GT", help="Validation images and GT masks: mIoU at each checkpoint, best model kept as best.pt."),
    save_every: int = cv.save_every_option(1000, " Validates too, with --val."),
    workers: int = cv.data_workers_option(),
    seed: int = cv.seed_option(),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="Train on the images that have a mask instead of stopping."),
) -> None:
    """Train DeepLabV2 on pseudo masks with the confidence-guided loss (pixels labelled 255 are ignored)."""
    explicit = [
        name for name in _DEFINING_OPTIONS if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    ]
    raise typer.Exit(
        _run_retrain(
            images, masks, classes, out, init, arch, iters, batch, crop, scales, lr, power, balanced,
            resume, device, val, save_every, workers, seed, skip_missing, explicit,
        )
    )  # fmt: skip


@handle_errors(interrupted="interrupted; training state saved in last.pt, continue with --resume")
def _run_retrain(
    images: Path, masks: Path, classes: str, out: Path, init: Optional[Path], arch: str, iters: int, batch: int,
    crop: int, scales: str, lr: float, power: float, balanced: bool, resume: bool, device: str,
    val: Optional[tuple[Path, Path]], save_every: int, workers: int, seed: int, skip_missing: bool,
    explicit: list[str],
) -> int:  # fmt: skip
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.device import resolve_device
    from clipseg_cli.segmentation.deeplab import arch_depth
    from clipseg_cli.segmentation.train import LAST, TrainConfig, Trainer, load_resume, resume_conflicts

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such folder")
    if not masks.is_dir():
        raise ConfigError(f"MASKS {masks}: no such folder")
    for name, value, low in (("--iters", iters, 1), ("--batch-size", batch, 1), ("--crop", crop, 8), ("--save-every", save_every, 1)):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
    if not lr > 0:
        raise ConfigError(f"--lr must be positive, got {lr}")
    if power < 0:
        raise ConfigError(f"--power must be >= 0, got {power}")
    arch_depth(arch)
    if init is not None and not init.is_file():
        raise ConfigError(f"--init {init}: no such file")
    val_images, val_gt = val if val else (None, None)
    if val_images is not None and not val_images.exists():
        raise ConfigError(f"--val IMAGES {val_images}: no such folder")
    if val_gt is not None and not val_gt.is_dir():
        raise ConfigError(f"--val GT {val_gt}: no such folder")
    torch_device = resolve_device(device)
    if workers < 0:
        workers = 0 if torch_device.type == "cpu" else min(4, os.cpu_count() or 1)
    cfg = TrainConfig(
        images=images, masks=masks, out=out, class_names=list(load_class_set(classes).classes), arch=arch,
        init=init, iters=iters, batch=batch, crop=crop, scales=parse_scales(scales), lr=lr, power=power,
        balanced=balanced, seed=seed, save_every=save_every, workers=workers, val_images=val_images,
        val_gt=val_gt, skip_missing=skip_missing,
    )  # fmt: skip
    if resume and (out / LAST).exists():
        saved = load_resume(cfg)
        given = cfg.to_json()
        conflicts = resume_conflicts(saved["train_config"], given, [_DEFINING_OPTIONS[n] for n in explicit])
        if conflicts:
            raise ConfigError(
                "--resume continues the run as it was started; these differ: "
                + "; ".join(conflicts)
                + ". Drop them, or train into a new --out"
            )
    with training_progress() as progress:
        reporter = TrainingReporter(progress)
        trainer = Trainer(cfg, torch_device, resume=resume, reporter=reporter)
        init_text = f"; init: {trainer.init_note}" if cfg.init is not None else ""
        reporter.message(
            f"{cfg.arch} on {torch_device}: {len(trainer.pairs)} image/mask pairs, "
            f"{len(cfg.class_names)} classes{init_text}"
        )
        summary = trainer.run()
    best = summary["val"]["best"]
    tail = f", best val mIoU {100 * best['miou']:.2f} at iteration {best['iteration']}" if best else ""
    console.print(f"done: {summary['iteration']} iterations, final loss {summary['final_loss']}{tail} -> {out}")
    return EXIT_OK


def predict(
    images: Path = typer.Argument(..., help="Images to segment (folder, searched recursively, or one file)."),
    checkpoint: Path = cv.checkpoint_option("A checkpoint of retrain (RUN/last.pt, RUN/best.pt), refine train or train-cam."),
    labels: Optional[Path] = cv.labels_option(
        " Masks keep only each image's classes (others 255), unlabelled images are skipped; needed by CAM generators.",
        required=False,
    ),
    annotations: Optional[Path] = cv.annotations_option(required=False),
    out: Path = cv.out_option("Output folder: masks/<rel>.png and predict.json."),
    scales: str = cv.scales_option("0.5,0.75,1", "Test scales whose softmax is averaged."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Also average horizontally flipped inputs."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Dense CRF on the averaged probabilities (DeepLab defaults)."),
    device: str = cv.device_option(),
    overwrite: bool = cv.overwrite_option(),
    bg_threshold: Optional[float] = typer.Option(
        None, "--bg-threshold", help="CAM generators (train-cam): background where no class map reaches this (default: the checkpoint's)."
    ),
    caa: bool = typer.Option(False, "--caa", help="CAM generators with a CLIP (clims): refine the maps with CLIP-ES's CAA."),
) -> None:
    """Segment images with a trained checkpoint; masks are written like the main command's."""
    raise typer.Exit(
        _run_predict(images, checkpoint, labels, annotations, out, scales, flip, crf, device, overwrite, bg_threshold, caa)
    )


@handle_errors
def _run_predict(
    images: Path, checkpoint: Path, labels: Optional[Path], annotations: Optional[Path], out: Path, scales: str,
    flip: bool, crf: bool, device: str, overwrite: bool, bg_threshold: Optional[float], caa: bool,
) -> int:  # fmt: skip
    from clipseg_cli.refiners.base import read_label_source
    from clipseg_cli.device import resolve_device
    from clipseg_cli.segmentation.predict import InferenceOptions, check_predict_rerun, load_predictor

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such file or folder")
    if bg_threshold is not None and not 0.0 <= bg_threshold <= 1.0:
        raise ConfigError(f"--bg-threshold must be in [0, 1], got {bg_threshold}")
    options = InferenceOptions(scales=parse_scales(scales), flip=flip, bg_threshold=bg_threshold, caa=caa)
    label_index = None if labels is None and annotations is None else read_label_source(labels, annotations)
    torch_device = resolve_device(device)
    settings: dict[str, Any] = {
        "command": "predict",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint),
        "scales": list(options.scales),
        "flip": flip,
        "crf": crf,
        "labels": str(labels or annotations) if labels or annotations else None,
        "labels_sha256": file_digest(labels or annotations),
        "bg_threshold": bg_threshold,
        "caa": caa,
        "device": str(torch_device),
    }
    if checkpoint.is_file():  # else loading says what is wrong with it
        check_predict_rerun(out, settings, overwrite)
    with loading(f"loading the model ({checkpoint.name}) on {torch_device}"):
        predictor = load_predictor(checkpoint, torch_device, options)
    settings["class_names"] = list(predictor.class_names)
    return predict_with_progress(
        images, out, predictor, crf=crf, overwrite=overwrite, settings=settings, device=torch_device,
        description="predicting", labels=label_index,
    )  # fmt: skip


def file_digest(path: Optional[Path]) -> Optional[str]:
    """SHA-256 of a file (a checkpoint, a labels file) for the settings a rerun must match; None
    for no file or a folder (VOC annotations)."""
    from clipseg_cli.clip.pretrained import sha256_of

    return sha256_of(path) if path is not None and path.is_file() else None


def predict_with_progress(
    images: Path, out: Path, predictor: Any, *, crf: bool, overwrite: bool, settings: dict[str, Any],
    device: Any, description: str, labels: Any = None,
) -> int:  # fmt: skip
    """Run ``predict_folder`` with progress (failures printed as they happen), print its
    summary, return the exit code."""
    from clipseg_cli.segmentation.predict import predict_folder
    from clipseg_cli.segmentation.train import out_of_memory_message

    with Progress() as progress:
        task = progress.add(description, total=None, count_failures=True)

        def on_failure(key: str, error: str) -> None:
            task.update(failed=task.state.failed + 1)
            progress.echo(failure_line(key, error), style="red")

        try:
            summary = predict_folder(
                images, out, predictor, crf=crf, overwrite=overwrite, settings=settings,
                on_start=lambda n: task.update(total=n), on_image=lambda _k: task.advance(),
                labels=labels, on_failure=on_failure,
            )  # fmt: skip
        except RuntimeError as exc:
            message = out_of_memory_message(exc, device)
            if message is None:
                raise
            raise ConfigError(f"{message}; use fewer or smaller --scales, or --device cpu") from None
    labelled = labels is not None or hasattr(predictor, "image_labels")
    unlabelled = f"{len(summary.unlabelled)} without labels, " if labelled else ""
    console.print(
        f"done: {summary.written} written, {summary.skipped} already there, {unlabelled}"
        f"{len(summary.failed)} failed -> {out / 'masks'}"
    )
    if summary.failed:
        echo(f"failures are listed in {out / 'predict.json'}")
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def register(app: typer.Typer) -> None:
    cv.command(app, "retrain", retrain, no_args_is_help=True)
    cv.command(app, "predict", predict, no_args_is_help=True)
