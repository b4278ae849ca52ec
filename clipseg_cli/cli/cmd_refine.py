"""`wsss-label refine train|predict`: learned refiners (WeakCLIP) trained on the main command's masks;
`refine train` is generated from the refiners of the method registry."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

import typer

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.common import predict_settings, predict_with_progress
from clipseg_cli.cli.console import handle_errors
from clipseg_cli.cli.train_commands import command_class, make_command
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.lock import holds_output
from clipseg_cli.methods.refiner import DEFAULT_WARMUP
from clipseg_cli.training.config import parse_scales

refine_app = cv.make_app(
    name="refine",
    help="Learned refiners: train a network on the seed masks of `wsss-label label`, then predict better masks.",
)


def _warmup_fraction(warmup_iters: Optional[int], warmup: Optional[float], iters: int) -> float:
    """The warm-up as the fraction of --iters RefinerConfig keeps: from --warmup-iters, or the
    deprecated --warmup (a fraction), or the default."""
    if warmup is not None:
        cv.warn_deprecated("--warmup", f"--warmup-iters N (here {round(warmup * iters)})")
        if warmup_iters is not None:
            raise ConfigError("give --warmup-iters only (--warmup is its deprecated form)")
        return warmup
    if warmup_iters is None:
        return DEFAULT_WARMUP
    return warmup_iters / max(1, iters) if warmup_iters >= 0 else -1.0


def _warmup_from_iterations(values: dict[str, Any], explicit: list[str]) -> None:
    """--warmup-iters N (or the deprecated fraction --warmup) -> the config's warm-up fraction."""
    warmup_iters = values.pop("warmup_iters", None)
    old = values.pop("warmup_fraction", None)
    values["warmup"] = _warmup_fraction(warmup_iters, old, values["iters"])
    if "warmup_iters" in explicit or "warmup_fraction" in explicit:
        explicit.append("warmup")


WARMUP_OPTIONS = (
    inspect.Parameter("warmup_iters", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int],
                      default=cv.warmup_iters_option(None, " Default: 7.5% of --iters.")),
    inspect.Parameter("warmup_fraction", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[float],
                      default=cv.deprecated_option(None, "--warmup", "--warmup-iters (--warmup was a fraction of --iters)")),
)  # fmt: skip


def predict(
    images: Path = typer.Argument(..., help="Images to make pseudo masks for (folder, searched recursively, or one file)."),
    checkpoint: Path = cv.checkpoint_option("RUN/last.pt of `refine train`."),
    labels: Optional[Path] = cv.labels_option(" Default: the training images' labels saved in the checkpoint.", required=False),
    annotations: Optional[Path] = cv.annotations_option(required=False),
    out: Path = cv.out_option("Output folder: masks/<rel>.png and predict.json."),
    scales: str = cv.scales_option("0.75,1,1.5", "Test scales whose softmax is averaged."),
    flip: bool = typer.Option(False, "--flip/--no-flip", help="Also average horizontally flipped inputs."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Dense CRF on the averaged probabilities."),
    weights: Optional[Path] = cv.weights_option(
        "CLIP checkpoint the refiner was trained on; default: the file recorded in the checkpoint, else as for labelling"
    ),
    device: str = cv.device_option(),
    overwrite: bool = cv.overwrite_option(),
) -> None:
    """Pseudo masks from a trained refiner: argmax of the (multi-scale, flipped, CRF-refined) scores; classes an image is not labelled with become 255 (WeakCLIP's eq. 14)."""
    raise typer.Exit(_run_predict(images, checkpoint, labels, annotations, out, scales, flip, crf, weights, device, overwrite))


@handle_errors
@holds_output()
def _run_predict(
    images: Path, checkpoint: Path, labels: Optional[Path], annotations: Optional[Path], out: Path, scales: str,
    flip: bool, crf: bool, weights: Optional[Path], device: str, overwrite: bool,
) -> int:  # fmt: skip
    from clipseg_cli.cli.common import load_clip_model
    from clipseg_cli.data.labels import labels_for_images, read_label_source, saved_image_labels
    from clipseg_cli.device import resolve_device
    from clipseg_cli.inference import InferenceOptions
    from clipseg_cli.methods import all_methods, method_for_kind
    from clipseg_cli.methods.base import checkpoint_clip
    from clipseg_cli.methods.refiner import RefinerPredictor, build_refiner
    from clipseg_cli.training.checkpoint import read_checkpoint

    options = InferenceOptions(scales=parse_scales(scales), flip=flip)
    torch_device = resolve_device(device)
    settings = predict_settings("refine predict", images, checkpoint, out, options, crf, labels or annotations, overwrite)
    ckpt = read_checkpoint(checkpoint)
    method = method_for_kind(str(ckpt["kind"]), f"--checkpoint {checkpoint}")
    if method.family != "refiner":
        refiners = ", ".join(m.kind for m in all_methods("refiner").values())
        raise ConfigError(
            f"--checkpoint {checkpoint}: kind {ckpt['kind']!r} is not a refiner ({refiners}); "
            "`wsss-label predict` segments with other checkpoints"
        )
    class_names = list(ckpt["class_names"])
    if labels is None and annotations is None:
        image_labels = saved_image_labels(ckpt.get("image_labels"))
        labels_source: Any = f"{checkpoint} (training labels)"
    else:
        image_labels = labels_for_images(read_label_source(labels, annotations), images, class_names)
        labels_source = str(labels or annotations)
    if not image_labels:
        raise ConfigError(f"no image in {images} has labels")
    clip, resolved = checkpoint_clip(ckpt, torch_device, weights, f"--checkpoint {checkpoint}", load_clip_model)
    try:
        model = build_refiner(method.Model, ckpt, clip)  # type: ignore[attr-defined]
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


def register(app: typer.Typer) -> None:
    from clipseg_cli.methods import all_methods

    refiners = list(all_methods("refiner").values())
    help_text = "Train a refiner on the seed masks: " + "; ".join(f"{m.name}, {m.summary}" for m in refiners)
    train = make_command(refiners, help=help_text, choose="--method", extra=WARMUP_OPTIONS, adapt=_warmup_from_iterations)
    cv.command(refine_app, "train", train, cls=command_class(refiners), no_args_is_help=True)
    cv.command(refine_app, "predict", predict, no_args_is_help=True)
    app.add_typer(refine_app, name="refine")
