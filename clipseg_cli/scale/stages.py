"""What a worker process of ``--workers N`` runs: the CPU stages around the model.

``prepare_stage``: decode + ``pipeline.prepare`` (scale-down, CLIP input tensor), before the
model. ``finish_stage``: ``pipeline.finish`` (resize, dense CRF, label map) and writing the
image's files with ``labeling.write_image_outputs``, after it. Neither touches the model;
the worker's settings come once, through ``init_worker``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipseg_cli.cam.pipeline import CLIPESSettings, PreparedImage, finish, prepare
from clipseg_cli.data.images import load_rgb
from clipseg_cli.labeling import OutputLayout, WorkItem, image_figures, write_image_outputs
from clipseg_cli.scale.lifeline import watch_lifeline

_NO_PIXELS = np.empty((0, 0, 3), np.uint8)


@dataclass(frozen=True)
class StageSpec:
    """Everything a worker needs (sent once per worker process, so it must pickle)."""

    images_root: Path
    layout: OutputLayout
    settings: CLIPESSettings
    patch: int
    save_cams: bool
    visualize: bool
    max_pixels: int | None = None


_spec: StageSpec | None = None

# Workers yield the CPU to the model's threads: the model (the bottleneck on a CPU) keeps the
# cores it can use and decoding/CRF fill the gaps, instead of slowing its thread team down.
WORKER_NICENESS = 10


def set_spec(spec: StageSpec) -> None:
    """The spec the stages of this process use (``init_worker`` in a worker; the main process runs them inline)."""
    global _spec
    _spec = spec


def init_worker(spec: StageSpec, lifeline: Any = None) -> None:
    """Pool initializer: keep the spec; exit with the main process (``lifeline``, see
    ``scale.lifeline``); Ctrl-C is the main process's to handle; one thread each."""
    set_spec(spec)
    if lifeline is not None:
        watch_lifeline(lifeline)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(AttributeError, OSError):
        os.nice(WORKER_NICENESS)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _current() -> StageSpec:
    if _spec is None:
        raise RuntimeError("worker process was not initialised")
    return _spec


def prepare_stage(item: WorkItem) -> tuple[PreparedImage, float]:
    """Decode and prepare one image; returns it and the seconds ``prepare`` took (part of "cam")."""
    spec = _current()
    image = load_rgb(spec.images_root / item.rel, spec.max_pixels)
    start = time.perf_counter()
    prepared = prepare(image, spec.settings, spec.patch)
    return prepared, time.perf_counter() - start


def for_finish(prepared: PreparedImage) -> PreparedImage:
    """The prepared image without its model input (what ``finish`` needs, lighter to send)."""
    return dataclasses.replace(prepared, pixels=_NO_PIXELS)


def finish_stage(item: WorkItem, prepared: PreparedImage, grid_cam: np.ndarray, grid_refined: np.ndarray, cam_seconds: float) -> dict:
    """CRF and mask, then the image's files (mask last); returns the fields of its ``Outcome``
    (seconds and figures for run.json)."""
    spec = _current()
    result = finish(prepared, grid_cam, grid_refined, item.labels, spec.settings)
    write_image_outputs(spec.layout, item, prepared.image, result, spec.save_cams, spec.visualize)
    crf = result.seconds["crf"]
    return {"seconds": {"cam": cam_seconds, "crf": crf, "total": cam_seconds + crf}, "figures": image_figures(result)}
