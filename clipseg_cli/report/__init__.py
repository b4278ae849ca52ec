"""`wsss-label report`: a static HTML review gallery of a labelling run (OUT/report/index.html).

``build_report(out_dir)`` is the one call; the modules: :mod:`.run` reads the run folder,
:mod:`.records` computes the page's data, :mod:`.work` / :mod:`.render` make the pictures
(in a process pool, cached by :mod:`.cache`), :mod:`.svg` the summary charts and
:mod:`.page` the HTML. This package's ``__init__`` imports nothing heavy, so pool workers
start fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipseg_cli.report.builder import BuildResult, OnPhase

SORT_CHOICES = ("confidence", "ignored", "area", "name", "iou")


def build(
    out_dir: str | os.PathLike[str],
    gt: str | os.PathLike[str] | None = None,
    sort: str = "confidence",
    limit: int | None = None,
    images: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    on_phase: OnPhase | None = None,
) -> BuildResult:
    """Build the report and return what was done (counts, records, warnings).

    ``on_phase(description, total) -> advance(n)`` hears of each phase of the work (the
    command line shows it as progress). Bad input raises
    :class:`clipseg_cli.errors.ConfigError` with a one-line message.
    """
    from clipseg_cli.report import builder as _build

    return _build.build(out_dir, gt, sort, limit, images, workers, on_phase)


def build_report(
    out_dir: str | os.PathLike[str],
    gt: str | os.PathLike[str] | None = None,
    sort: str = "confidence",
    limit: int | None = None,
    images: str | os.PathLike[str] | None = None,
) -> Path:
    """Build ``out_dir/report/index.html`` (and its thumbnails) for a run folder of the main
    command; returns the path of index.html.

    ``gt``: a folder of ground-truth label PNGs (adds per-image IoU, a GT column and the
    mIoU table); ``sort``: ``confidence`` | ``ignored`` | ``area`` | ``name`` | ``iou``, worst
    first; ``limit``: only the N worst images get a row; ``images``: the image folder when
    the one recorded in run.json has moved. Rebuilding only renders what changed.
    Raises :class:`clipseg_cli.errors.ConfigError` (one line, exit 2) on bad input.
    """
    return build(out_dir, gt, sort, limit, images).index


__all__ = ["SORT_CHOICES", "build", "build_report"]
