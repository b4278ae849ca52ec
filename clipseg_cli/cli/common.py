"""Steps several commands share: loading CLIP (download progress, a loading status), writing a JSON
report, predicting a folder with progress."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipseg_cli.cli.console import console
from clipseg_cli.cli.progress import Progress, echo, failure_line, loading
from clipseg_cli.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP
    from clipseg_cli.clip.pretrained import ResolvedWeights


def resolve_clip_weights(weights: Path | None) -> ResolvedWeights:
    """The CLIP weights file and its SHA-256, downloading the default with progress if needed."""
    from clipseg_cli.clip.pretrained import resolve_weights

    with Progress() as progress:
        task = None

        def on_download(done: int, total: int | None) -> None:
            nonlocal task
            mb_total = None if total is None else round(total / 1e6, 1)
            if task is None:
                task = progress.add("downloading CLIP weights", total=mb_total, unit="MB")
            task.update(total=mb_total, completed=round(done / 1e6, 1))

        return resolve_weights(weights, on_download)


def load_resolved_clip(resolved: ResolvedWeights, device: torch.device) -> CLIP:
    """Load resolved CLIP weights, with a "loading the model" status meanwhile."""
    from clipseg_cli.clip.loading import load_clip

    with loading(f"loading the model ({resolved.path.name}) on {device}"):
        return load_clip(resolved.path, device)


def load_clip_model(weights: Path | None, device: torch.device) -> tuple[CLIP, ResolvedWeights]:
    """Resolve the weights (downloading the default if needed) and load CLIP."""
    resolved = resolve_clip_weights(weights)
    return load_resolved_clip(resolved, device), resolved


def emit_report(out: Path | None, report: dict[str, Any]) -> None:
    """Write ``report`` as JSON to ``out`` atomically, or to stdout when ``out`` is ``-``."""
    from clipseg_cli.io.atomic import write_json

    if out is None:
        return
    if str(out) == "-":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        write_json(out, report)
        console.print(f"report: {out}")


def file_digest(path: Path | None) -> str | None:
    """SHA-256 of a file (a checkpoint, a labels file) for the settings a rerun must match; None
    for no file or a folder (VOC annotations)."""
    from clipseg_cli.clip.pretrained import sha256_of

    return sha256_of(path) if path is not None and path.is_file() else None


def predict_settings(
    command: str, images: Path, checkpoint: Path, out: Path, options: Any, crf: bool, labels_file: Path | None,
    overwrite: bool, **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """The settings a predict run records in predict.json; a rerun into ``out`` with other decisive
    ones is refused here, before any model loads."""
    from clipseg_cli.inference import check_predict_rerun

    if not images.exists():
        raise ConfigError(f"IMAGES {images}: no such file or folder")
    settings: dict[str, Any] = {
        "command": command,
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": file_digest(checkpoint),
        "scales": list(options.scales),
        "flip": options.flip,
        "crf": crf,
        "labels_sha256": file_digest(labels_file),
        **extra,
    }
    if checkpoint.is_file():  # else reading it says what is wrong
        check_predict_rerun(out, settings, overwrite)
    return settings


def predict_with_progress(
    images: Path, out: Path, predictor: Any, *, crf: bool, overwrite: bool, settings: dict[str, Any],
    device: Any, description: str, labels: Any = None,
) -> int:  # fmt: skip
    """Run ``predict_folder`` with progress (failures printed as they happen), print its
    summary, return the exit code."""
    from clipseg_cli.inference import predict_folder
    from clipseg_cli.training.run import out_of_memory_message

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
        f"done: {summary.written} written, {summary.skipped} already there, {unlabelled}{len(summary.failed)} failed -> {out / 'masks'}"
    )
    if summary.failed:
        echo(f"failures are listed in {out / 'predict.json'}")
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK
