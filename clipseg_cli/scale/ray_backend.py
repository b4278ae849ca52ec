"""``--backend ray``: the images in shards, one Ray task per shard, each with its own model.

A task (``label_shard``) runs the serial path (``LabelJob.run_serial``) over its shard on a
Ray worker: it loads the model once per worker process (kept for the worker's next shards),
writes every output atomically to ``--out`` (which must be storage that every node sees at
the same path, as must the images and the weights) and returns one ``Outcome`` per image.
The driver records them as they come back; ``LabelJob.run`` writes the merged run.json.

Files are a pure function of (image, labels, settings, weights), each written whole and
renamed into place, so a task that Ray retries (its worker or node died) rewrites the same
files, and a killed run resumes like a local one: images whose mask exists are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.data.limits import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ConfigError, OutputWriteError
from clipseg_cli.labeling import (
    Engine,
    LabelJob,
    Outcome,
    OutputLayout,
    Record,
    WorkItem,
)

MAX_SHARD = 64  # images per task at most: a retry redoes at most this many
SHARDS_PER_SLOT = 4  # tasks per CPU (or GPU) of the cluster: balance, progress
TASK_RETRIES = 3  # Ray's retries of a task whose worker or node died
CANCEL_WAIT_S = 30.0  # after Ctrl-C, how long cancelled tasks get to stop
CONNECT_TIMEOUT_S = 5.0  # to reach the cluster's address before Ray is asked to join it


@dataclass(frozen=True)
class ShardSpec:
    """What a task needs besides its images (paths absolute, as every node sees them)."""

    images_root: str
    out: str
    weights: str
    class_set: ClassSet
    settings: CLIPESSettings
    device: str  # as given (auto | cpu | cuda): resolved on the node that runs the task
    save_cams: bool
    visualize: bool
    max_pixels: int | None = DEFAULT_MAX_PIXELS


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        # (no brackets in the message: the console reads them as markup)
        raise ConfigError(
            "--backend ray needs Ray, which is not installed: pip install ray (or install wsss-label with its ray extra)"
        ) from None
    return ray


# -- in the Ray worker ---------------------------------------------------------------------

_cached: tuple[tuple, CLIPESPredictor] | None = None


def _predictor(spec: ShardSpec) -> CLIPESPredictor:
    """The model for ``spec``, loaded once per worker process (one kept at a time)."""
    global _cached
    key = (spec.weights, spec.class_set, spec.settings, spec.device)
    if _cached is None or _cached[0] != key:
        from clipseg_cli.clip.loading import load_clip
        from clipseg_cli.device import resolve_device

        _cached = None  # free the old model before loading another
        device = resolve_device(spec.device)
        _cached = (key, CLIPESPredictor(load_clip(spec.weights, device), spec.class_set, spec.settings))
    return _cached[1]


def label_shard(spec: ShardSpec, items: Sequence[WorkItem]) -> list[Outcome]:
    """A Ray task's body: label ``items`` one after the other, write their files, return outcomes.

    Plain Python, so it runs (and is tested) without Ray as well. No run.json here: that is
    the driver's; neither are stale ``.part`` files removed (other tasks may be writing).
    """
    job = LabelJob(
        images_root=Path(spec.images_root),
        layout=OutputLayout(Path(spec.out)),
        predictor=_predictor(spec),
        save_cams=spec.save_cams,
        visualize=spec.visualize,
        max_pixels=spec.max_pixels,
    )
    outcomes: list[Outcome] = []
    job.run_serial(items, outcomes.append)
    return outcomes


# -- in the driver -------------------------------------------------------------------------


def shard(items: Sequence[WorkItem], slots: int, size: int | None = None) -> list[list[WorkItem]]:
    """Consecutive shards: ``size`` images each, by default about SHARDS_PER_SLOT per slot."""
    if not items:
        return []
    if size is None:
        size = min(MAX_SHARD, max(1, math.ceil(len(items) / (SHARDS_PER_SLOT * max(1, slots)))))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def cluster_address(address: str | None) -> str | None:
    """``--ray-address``, else $RAY_ADDRESS, else None (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str | None) -> None:
    """ConfigError within seconds if ``address`` (HOST:PORT or ray://HOST:PORT) takes no connection.

    Ray itself retries an unreachable address for minutes; ``auto`` (and no address) fail
    fast in Ray already.
    """
    if not address or address in ("auto", "local"):
        return
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {reason}") from None


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local one; True if started here."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    address = cluster_address(address)
    check_reachable(address)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # "local": always a new instance, never one that happens to run on this machine
            ray.init(address="local", include_dashboard=False, **options)
    except ConnectionError as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot start Ray: {_first_line(exc)}") from None
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def ray_engine(spec: ShardSpec, address: str | None = None, shard_size: int | None = None) -> Engine:
    """An engine for ``LabelJob.run`` that runs the images as Ray tasks."""

    def engine(items: Sequence[WorkItem], record: Record) -> None:
        if not items:
            return
        ray = import_ray()
        started_here = _connect(ray, address)
        try:
            _run(ray, spec, items, record, shard_size)
        finally:
            if started_here:
                _shutdown_local(ray)

    return engine


def _shutdown_local(ray: Any) -> None:
    """Stop the Ray started here and remove its session folder (/tmp/ray/session_*: logs, sockets)."""
    session = None
    with contextlib.suppress(Exception):
        session = ray._private.worker.global_worker.node.get_session_dir_path()
    with contextlib.suppress(Exception):
        ray.shutdown()
    if not session:
        return
    shutil.rmtree(session, ignore_errors=True)
    latest = os.path.join(os.path.dirname(session), "session_latest")
    with contextlib.suppress(OSError):
        if os.path.realpath(latest) == os.path.realpath(session):
            os.unlink(latest)


def _run(ray: Any, spec: ShardSpec, items: Sequence[WorkItem], record: Record, shard_size: int | None) -> None:
    gpu = spec.device.lower().startswith("cuda")
    resources = ray.cluster_resources()
    slots = int(resources.get("GPU" if gpu else "CPU", 1)) or 1
    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=TASK_RETRIES)(label_shard)
    spec_ref = ray.put(spec)
    shards = {task.remote(spec_ref, part): part for part in shard(items, slots, shard_size)}
    pending = list(shards)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                _collect(ray, ref, shards[ref], record)
    except (KeyboardInterrupt, OutputWriteError):
        # Running tasks get KeyboardInterrupt (their atomic writes clean up), queued ones never start.
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)
        with contextlib.suppress(BaseException):
            done, _ = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
            for ref in done:
                _collect(ray, ref, shards[ref], record, quiet=True)
        raise


def _collect(ray: Any, ref: Any, part: list[WorkItem], record: Record, quiet: bool = False) -> None:
    """Record a finished task's outcomes; a task that failed as a whole fails its images."""
    try:
        outcomes = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return
    except ray.exceptions.RayError as exc:
        if quiet:
            return
        cause = getattr(exc, "cause", None)
        if isinstance(cause, OutputWriteError):  # the output folder is full or read-only: stop
            for item in part:
                record(Outcome.failure(item, cause))
            raise cause from None
        reason = _first_line(cause if isinstance(cause, BaseException) else exc)
        name = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
        for item in part:
            record(Outcome(item, error=f"Ray task failed: {name}: {reason}"))
        return
    for outcome in outcomes:
        record(outcome)
