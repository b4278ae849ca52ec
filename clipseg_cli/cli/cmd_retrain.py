"""`wsss-label retrain` (DeepLabV2 on pseudo masks, confidence-guided loss; generated from the
method registry) and `wsss-label predict` (masks from any learned checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.common import predict_settings, predict_with_progress
from clipseg_cli.cli.console import handle_errors
from clipseg_cli.cli.progress import loading
from clipseg_cli.cli.train_commands import command_class, make_command
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.lock import holds_output
from clipseg_cli.training.config import parse_scales


def _used_by(option: str) -> str:
    """Which registered methods read a predict option (their ``predict_options``)."""
    from clipseg_cli.methods import all_methods

    names = [name for name, m in all_methods().items() if option in m.predict_options]
    return f" Used by: {', '.join(names)}." if names else " Used by no registered method."


def _kinds() -> str:
    from clipseg_cli.methods import all_methods

    return ", ".join(f"{m.kind} ({m.name})" for m in all_methods().values())


def predict(
    images: Path = typer.Argument(..., help="Images to segment (folder, searched recursively, or one file)."),
    checkpoint: Path = cv.checkpoint_option(
        f"A checkpoint of a learned method: RUN/last.pt (or RUN/best.pt of retrain); kinds: {_kinds()}."
    ),
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
        None, "--bg-threshold", help="Background where no class map reaches this (default: the checkpoint's)." + _used_by("bg_threshold")
    ),
    caa: bool = typer.Option(
        False, "--caa", help="Refine the maps with CLIP-ES's CAA on the CLIP the run was trained with." + _used_by("caa")
    ),
) -> None:
    """Segment images with a trained checkpoint; masks are written like the main command's."""
    raise typer.Exit(_run_predict(images, checkpoint, labels, annotations, out, scales, flip, crf, device, overwrite, bg_threshold, caa))


@handle_errors
@holds_output()
def _run_predict(
    images: Path, checkpoint: Path, labels: Optional[Path], annotations: Optional[Path], out: Path, scales: str,
    flip: bool, crf: bool, device: str, overwrite: bool, bg_threshold: Optional[float], caa: bool,
) -> int:  # fmt: skip
    from clipseg_cli.data.labels import read_label_source
    from clipseg_cli.device import resolve_device
    from clipseg_cli.inference import InferenceOptions, load_predictor

    if bg_threshold is not None and not 0.0 <= bg_threshold <= 1.0:
        raise ConfigError(f"--bg-threshold must be in [0, 1], got {bg_threshold}")
    options = InferenceOptions(scales=parse_scales(scales), flip=flip, bg_threshold=bg_threshold, caa=caa)
    label_index = None if labels is None and annotations is None else read_label_source(labels, annotations)
    torch_device = resolve_device(device)
    settings = predict_settings(
        "predict", images, checkpoint, out, options, crf, labels or annotations, overwrite,
        labels=str(labels or annotations) if labels or annotations else None, bg_threshold=bg_threshold, caa=caa,
        device=str(torch_device),
    )  # fmt: skip
    with loading(f"loading the model ({checkpoint.name}) on {torch_device}"):
        predictor = load_predictor(checkpoint, torch_device, options)
    settings["class_names"] = list(predictor.class_names)
    return predict_with_progress(
        images, out, predictor, crf=crf, overwrite=overwrite, settings=settings, device=torch_device,
        description="predicting", labels=label_index,
    )  # fmt: skip


def register(app: typer.Typer) -> None:
    from clipseg_cli.methods import all_methods

    segmenters = list(all_methods("segmenter").values())
    retrain = make_command(segmenters, help=segmenters[0].summary)
    cv.command(app, "retrain", retrain, cls=command_class(segmenters), no_args_is_help=True)
    cv.command(app, "predict", predict, no_args_is_help=True)
