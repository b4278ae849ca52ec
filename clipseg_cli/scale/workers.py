"""``--workers N``: decoding, CRF and writing in N worker processes, the model in this one.

The main process keeps the model (and the GPU); ``stages.prepare_stage`` runs ahead of it and
``stages.finish_stage`` after it in a process pool, scheduled by ``scheduler.Pipeline`` with
bounded windows. Every stage is the one the serial path runs (``pipeline.prepare``,
``grid_cams``, ``pipeline.finish``, ``labeling.write_image_outputs``) on the same arrays, so
the files are byte-identical to ``--workers 0``.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

from clipseg_cli.cam.pipeline import CLIPESPredictor, PreparedImage
from clipseg_cli.io.atomic import remove_stale_parts
from clipseg_cli.labeling import Engine, LabelJob, Record, WorkItem
from clipseg_cli.scale import lifeline, stages
from clipseg_cli.scale.scheduler import Pipeline


def mp_context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (workers fork from a clean server that imported torch once),
    else spawn. Never plain fork: the parent has torch's threads running. The fork server is
    started here, out of Ctrl-C's reach (``lifeline.start_forkserver``)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([lifeline.__name__, stages.__name__])
        lifeline.start_forkserver()
        return context
    return multiprocessing.get_context("spawn")


def windows(workers: int) -> tuple[int, int]:
    """(prefetch, finish window): enough queued work to keep every worker and the model busy."""
    return workers + 1, workers + 1


def model_stage(predictor: CLIPESPredictor):
    """The stage that runs here: CAM + CAA on the patch grid (the model)."""

    def run(item: WorkItem, prepared_and_seconds: tuple[PreparedImage, float]) -> tuple:
        prepared, prepare_seconds = prepared_and_seconds
        start = time.perf_counter()
        grid_cam, grid_refined = predictor.grid_cams(prepared.clip_input(), item.labels)
        cam_seconds = prepare_seconds + time.perf_counter() - start
        return stages.for_finish(prepared), grid_cam, grid_refined, cam_seconds

    return run


def stage_spec(job: LabelJob, predictor: CLIPESPredictor) -> stages.StageSpec:
    """What the worker stages need of a job (the model stays here)."""
    return stages.StageSpec(
        images_root=job.images_root,
        layout=job.layout,
        settings=predictor.settings,
        patch=predictor.model.visual.patch_size,
        save_cams=job.save_cams,
        visualize=job.visualize,
        max_pixels=job.max_pixels,
    )


def process_pool(workers: int, spec: stages.StageSpec) -> ProcessPoolExecutor:
    """``workers`` processes that run the stages with ``spec``, never see Ctrl-C and exit with
    this process (``scale.lifeline``). Every engine with worker processes starts them here."""
    context = mp_context()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=stages.init_worker,
        initargs=(spec, lifeline.lifeline_end()),
    )


def worker_engine(job: LabelJob, workers: int) -> Engine:
    """An engine for ``LabelJob.run`` that overlaps the model with ``workers`` processes."""
    if workers < 1:
        raise ValueError("worker_engine needs at least one worker")
    predictor = job.predictor
    if predictor is None:
        raise ValueError("worker_engine runs the model here: the job needs a predictor")
    spec = stage_spec(job, predictor)

    def make_executor() -> ProcessPoolExecutor:
        return process_pool(workers, spec)

    def engine(items: Sequence[WorkItem], record: Record) -> None:
        prefetch, window = windows(workers)
        pipeline = Pipeline(
            make_executor,
            stages.prepare_stage,
            model_stage(predictor),
            stages.finish_stage,
            prefetch=prefetch,
            window=window,
            on_abort=lambda: remove_stale_parts(job.layout.root),
        )
        pipeline.run(items, record)

    return engine
