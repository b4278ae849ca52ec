"""`wsss-label eval`: mIoU of pseudo masks or CAMs against ground-truth label maps."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.common import emit_report
from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.cli.progress import Progress
from clipseg_cli.errors import ConfigError
from clipseg_cli.evaluation.classnames import resolve_class_names
from clipseg_cli.evaluation.matching import pair_files
from clipseg_cli.evaluation.runner import evaluate_cams, evaluate_masks, visualize_cams


class CamKey(str, Enum):
    cam = "cam"
    refined = "refined"


class PredIgnore(str, Enum):
    exclude = "exclude"
    background = "background"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.2f}"


def _check_outputs(out: Path | None, visualize: Path | None) -> None:
    if out is not None and str(out) != "-" and out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as {out / 'report.json'}")
    if visualize is not None and visualize.exists() and not visualize.is_dir():
        raise ConfigError(f"--visualize {visualize} exists and is not a folder")
    # Fail before the long loop, not after it, when an output folder cannot be made.
    for folder in (None if out is None or str(out) == "-" else out.parent, visualize):
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None


def _print_report(report: dict[str, Any]) -> None:
    per_class = report["per_class"]
    table = Table(title=f"eval: {report['n_images']} images ({report['mode']})", title_justify="left")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("precision %", justify="right")
    table.add_column("recall %", justify="right")
    unseen = 0
    for name, row in per_class.items():
        if row["in_gt"]:
            table.add_row(name, _pct(row["iou"]), _pct(row["precision"]), _pct(row["recall"]))
        elif row["pred_pixels"]:
            table.add_row(f"[dim]{name} (not in GT)[/]", "[dim]—[/]", _pct(row["precision"]), "[dim]—[/]")
        else:
            unseen += 1
    console.print(table)
    if unseen:
        console.print(f"[dim]{unseen} classes neither in the GT nor predicted are not shown[/]")
    if report["mode"] == "cams":
        sweep = Table(title=f"threshold sweep, {report['cam_key']} CAMs", title_justify="left")
        sweep.add_column("t", justify="right")
        sweep.add_column("mIoU %", justify="right")
        for row in report["sweep"]:
            best = row["threshold"] == report["best_threshold"]
            mark = " [bold green]← best[/]" if best else ""
            sweep.add_row(f"{row['threshold']:.2f}", _pct(row["miou"]) + mark)
        console.print(sweep)
        console.print(f"best threshold t = {report['best_threshold']:.2f}")
    line = (
        f"[bold]mIoU {_pct(report['miou'])}%[/] over {report['n_classes_in_gt']} classes in the GT, "
        f"pixel accuracy {_pct(report['pixel_accuracy'])}%"
    )
    if report["mode"] == "masks":
        line += f", predicted 255 on {_pct(report['ignored_fraction'])}% of valid GT pixels ({report['pred_ignore']})"
    console.print(line)


def evaluate(
    pred: Path = typer.Argument(
        ..., help="Predicted masks: a folder of label PNGs (OUT/masks), or with --cams of CAM .npz files (OUT/cams)."
    ),
    gt: Path = typer.Argument(..., help="Ground truth: a folder of VOC-style label PNGs (palette or greyscale; 255 = void)."),
    classes: str = cv.classes_option(),
    out: Optional[Path] = cv.out_option("Write the JSON report to this file ('-' for stdout).", default=None, metavar="FILE"),
    cams: bool = typer.Option(False, "--cams", help="PRED holds CAM .npz files: sweep the background threshold 0.05..0.95."),
    cam_key: Optional[CamKey] = typer.Option(
        None, "--cam-key", help="With --cams: score the raw 'cam' or the CAA 'refined' maps (default: refined)."
    ),
    pred_ignore: Optional[PredIgnore] = typer.Option(
        None,
        "--pred-ignore",
        help="Predicted 255 pixels: 'exclude' leaves them out of the matrix, 'background' counts them as background (default: exclude).",
    ),
    visualize: Optional[Path] = typer.Option(
        None, "--visualize", metavar="DIR", help="Write GT | prediction | errors pictures and a per-class IoU bar chart to this folder."
    ),
) -> None:
    """Score masks (or CAMs) against ground truth: per-class IoU, mIoU, pixel accuracy."""
    if cams and pred_ignore is not None:
        raise ConfigError("--pred-ignore applies to mask PNGs; CAM predictions have no 255 pixels")
    if not cams and cam_key is not None:
        raise ConfigError("--cam-key needs --cams")
    names = resolve_class_names(classes)
    pairs = pair_files(pred, gt, ".npz" if cams else ".png")
    _check_outputs(out, visualize)

    try:
        with Progress() as progress:
            task = progress.add("eval", total=len(pairs))

            def tick() -> None:
                task.advance()

            if cams:
                key = (cam_key or CamKey.refined).value
                report = evaluate_cams(pairs, names, key, on_image=tick)
                task.finish()
                if visualize is not None:
                    pics = progress.add("pictures", total=len(pairs))
                    visualize_cams(pairs, names, report, visualize, key, on_image=lambda: pics.advance())
            else:
                mode = (pred_ignore or PredIgnore.exclude).value
                report = evaluate_masks(pairs, names, mode, visualize, on_image=tick)

        report["pred"] = str(pred)
        report["gt"] = str(gt)
        _print_report(report)
        emit_report(out, report)
    except OSError as exc:  # e.g. an output folder that cannot be written
        raise ConfigError(str(exc)) from None
    if visualize is not None:
        console.print(f"pictures: {visualize}")


def register(app: typer.Typer) -> None:
    cv.command(app, "eval", handle_errors(evaluate))
