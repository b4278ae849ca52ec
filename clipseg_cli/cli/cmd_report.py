"""`wsss-label report OUT`: a static HTML gallery to review a run's pseudo masks, worst first."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from clipseg_cli.cli.console import console, handle_errors, warn
from clipseg_cli.cli.conventions import command
from clipseg_cli.cli.progress import Progress
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.lock import output_lock

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
    serve: bool = typer.Option(
        False,
        "--serve",
        help="Then serve the gallery on 127.0.0.1 (a token in the URL) and save marks to OUT/review.json as you go; Ctrl-C stops.",
    ),
    port: int = typer.Option(0, "--port", help="With --serve: the port (default 0: a free one)."),
) -> None:
    """Build OUT/report/index.html: a gallery of the pseudo masks that opens from disk."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0..65535, not {port}")
    if port and not serve:
        raise ConfigError("--port needs --serve")
    # The folder's lock while building (never from a folder a run is writing); not while serving,
    # so a `label --redo` of the marked images can run beside the server.
    with output_lock(out) if out.is_dir() else contextlib.nullcontext():
        result = build_with_progress(out, gt=gt, sort=sort.value, limit=limit, images=images, workers=workers)
    shown = f"{result.n_shown} of {result.n_images}" if result.n_shown != result.n_images else f"{result.n_images}"
    console.print(
        f"report: {result.index} ({shown} images; thumbnails: {result.rendered} rendered, "
        f"{result.n_shown - min(result.n_shown, result.rendered)} up to date; {result.seconds:.1f} s)",
        soft_wrap=True,
    )
    if result.gt is not None and result.gt["miou"] is not None:
        console.print(f"mIoU {100 * result.gt['miou']:.2f}% over {result.gt['n_images']} image(s) with GT")
    if serve:
        serve_report(out, result, port)


def serve_report(out: Path, result: BuildResult, port: int) -> None:
    """Serve the built gallery until Ctrl-C (then one line, exit 0: stopping is how it ends)."""
    from clipseg_cli.report.serve import ReviewServer

    try:
        server = ReviewServer(out, result.images_root, result.image_names, port=port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
    with server:
        console.print(f"serving the gallery at {server.url}", soft_wrap=True)
        console.print(f"marks are saved to {server.review_path}; Ctrl-C stops", soft_wrap=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            console.print(f"stopped; marks are in {server.review_path}" if server.review_path.is_file() else "stopped; no marks saved")


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
