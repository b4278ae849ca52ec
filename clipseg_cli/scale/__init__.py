"""Scale-out for the label job: worker processes on one machine, Ray tasks on a cluster.

- ``scheduler``: a bounded three-stage pipeline (pool -> this thread -> pool), generic.
- ``stages``: what a worker process runs (decode + prepare, finish + write); no model.
- ``workers``: ``--workers N``, the local engine built from those two.
- ``ray_backend``: ``--backend ray``, shards of images as Ray tasks with their own models.

Every engine hands one ``labeling.Outcome`` per image back to ``labeling.LabelJob.run``,
which alone keeps the entries and writes run.json; files are written by
``labeling.write_image_outputs`` wherever the image is finished.
"""

from __future__ import annotations

import os

MAX_DEFAULT_WORKERS = 8


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(n_images: int, cpus: int | None = None) -> int:
    """``--workers`` when not given: one per core, at most 8.

    Workers run at a lower priority than the model (``stages.WORKER_NICENESS``), so one per
    core does not slow the model down; they fill the cores it leaves idle, and when the CRF
    is the bottleneck (a GPU runs the model) all of them are busy. 0 (no pool) on a single
    core, where nothing can overlap, and for a single image, where starting the pool costs
    more than it saves.
    """
    cpus = usable_cpus() if cpus is None else cpus
    if cpus < 2 or n_images < 2:
        return 0
    return min(MAX_DEFAULT_WORKERS, cpus)
