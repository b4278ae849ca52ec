"""Steps several commands share: loading CLIP with a download bar, writing a JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipseg_cli.cli.console import console, progress_bar

if TYPE_CHECKING:
    from clipseg_cli.clip.model import CLIP
    from clipseg_cli.clip.pretrained import ResolvedWeights


def load_clip_model(weights: Path | None, device: torch.device) -> tuple[CLIP, ResolvedWeights]:
    """Resolve the weights (downloading the default with a progress bar if needed) and load CLIP."""
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.clip.pretrained import resolve_weights

    with progress_bar() as bar:
        task = bar.add_task("downloading CLIP weights", total=None, visible=False)

        def on_download(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total, visible=True)

        resolved = resolve_weights(weights, on_download)
    return load_clip(resolved.path, device), resolved


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
