"""`wsss-label report OUT`: a static HTML gallery to review a run's pseudo masks, worst first."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from clipseg_cli.cli.console import console, handle_errors, warn
from clipseg_cli.cli.conventions import command
from clipseg_cli.cli.progress import Progress
from clipseg_cli.errors import ConfigError

if TYPE_CHECKING:
    from clipseg_cli.report.builder import BuildResult


class SortKey(str, Enum):
    confidence = "confidence"
    ignored = "ignored"
    area = "area"
    name = "name"
    iou = "iou"


def report(
    out: Path = typer.Argument(
        ..., help="Output folder of a run (`wsss-label IMAGES --labels ... --out OUT`): run.json and masks/, optionally cams/."
    ),
    gt: Optional[Path] = typer.Option(
        None,
        "--gt",
        metavar="DIR",
        help="Folder of ground-truth label PNGs (as for `wsss-label eval`): adds each image's IoU, a GT column and the mIoU table.",
    ),
    sort: SortKey = typer.Option(
        SortKey.confidence,
        "--sort",
        help="Initial order, worst first: confidence (lowest mean CRF confidence), ignored (largest 255 share), area (smallest foreground), name, iou (lowest, needs --gt).",
    ),
    limit: Optional[int] = typer.Option(
        None, "--limit", help="Only the N worst images by --sort get a row and thumbnails (the summary covers all)."
    ),
    images: Optional[Path] = typer.Option(
        None, "--images", metavar="DIR", help="The image folder, if it is no longer where run.json says (settings.images)."
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="Processes rendering thumbnails (default: one per CPU core)."),
) -> None:
    """Build OUT/report/index.html: a gallery of the pseudo masks that opens from disk."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    result = build_with_progress(out, gt=gt, sort=sort.value, limit=limit, images=images, workers=workers)
    shown = f"{result.n_shown} of {result.n_images}" if result.n_shown != result.n_images else f"{result.n_images}"
    console.print(
        f"report: {result.index} ({shown} images; thumbnails: {result.rendered} rendered, "
        f"{result.n_shown - min(result.n_shown, result.rendered)} up to date; {result.seconds:.1f} s)",
        soft_wrap=True,
    )
    if result.gt is not None and result.gt["miou"] is not None:
        console.print(f"mIoU {100 * result.gt['miou']:.2f}% over {result.gt['n_images']} image(s) with GT")


def build_with_progress(out: Path, **options: Any) -> BuildResult:
    """``report.build`` with its phases shown as progress and its warnings printed (first five)."""
    from clipseg_cli.report import build

    with Progress() as progress:

        def on_phase(description: str, total: int) -> Callable[[int], None]:
            task = progress.add(description, total=total)
            return lambda n: task.advance(n)

        result = build(out, on_phase=on_phase, **options)
    for warning in result.warnings[:5]:
        warn(warning)
    if len(result.warnings) > 5:
        warn(f"... and {len(result.warnings) - 5} more")
    return result


def register(app: typer.Typer) -> None:
    command(app, "report", handle_errors(report))
