"""Steps several commands share: loading CLIP (download progress, a loading status), writing a JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipseg_cli.cli.console import console
from clipseg_cli.cli.progress import Progress, loading

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
