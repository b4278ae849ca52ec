"""``--batch-size N``: images of one padded size through the model together; on a GPU, the finish too.

Decoding and preparing run ahead in the worker processes (``stages.prepare_stage``), as with
``--workers``. From the prepared images waiting (a bounded look-ahead) this process takes a
group of the same padded size, at most N (fewer for large images, ``images_per_batch``), and
runs Grad-CAM and CAA for all of them at once (``CLIPESPredictor.grid_maps``).

Then either
- CPU finish (the model on the CPU, or the CRF is pydensecrf): the grid maps come back to the
  host and the workers run ``stages.finish_stage`` (resize, pydensecrf, label map, files), or
- device finish (a GPU with the torch CRF, or no CRF): resizing, CRF, label map and confidence
  run on the device (``device_finish.finish_on_device``), the batch's results come back in one
  asynchronous copy, and the workers only encode and write the files (``write_stage``).

The device is never waited for per label or per image: a batch is launched, the previous
batch's copies are collected, and only then does the host block. Files, run.json entries and
per-image seconds have the same layout as the other engines (seconds of a batch are shared
equally by its images).

Ctrl-C, a worker that dies, a full disk and the worker processes' lifeline are handled as in
``scheduler.Pipeline``, whose seam for batching ``BatchPipeline`` fills in: after Ctrl-C the
batches already on the device are finished (within the drain's 10 s), after a full disk they
are dropped.
"""

from __future__ import annotations

import collections
import time
from concurrent.futures import BrokenExecutor, Executor, Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from clipseg_cli.cam.device_finish import (
    BatchCRF,
    DeviceImage,
    HostCopy,
    finish_on_device,
    pydensecrf_on_tensors,
)
from clipseg_cli.cam.pipeline import CLIPESPredictor, LabelResult, PreparedImage, to_device
from clipseg_cli.cam.preprocess import normalize_pixels
from clipseg_cli.data.images import load_rgb
from clipseg_cli.io.atomic import remove_stale_parts
from clipseg_cli.labeling import (
    IMAGE_FAILURES,
    Engine,
    LabelJob,
    Outcome,
    Record,
    WorkItem,
    image_figures,
    write_image_outputs,
)
from clipseg_cli.scale import stages
from clipseg_cli.scale.scheduler import FAILED, Pipeline
from clipseg_cli.scale.workers import process_pool, stage_spec

DEFAULT_CUDA_BATCH = 16
REFERENCE_TOKENS = 1 + 32 * 32  # a 512x512 input: --batch-size counts images of about this size


def default_batch_size(device: torch.device) -> int:
    """``--batch-size`` when not given: 16 on a GPU; 1 on the CPU, where batching gains nothing."""
    return DEFAULT_CUDA_BATCH if device.type == "cuda" else 1


def images_per_batch(batch_size: int, tokens: int) -> int:
    """Images of ``tokens`` tokens per batch: ``batch_size``, fewer for inputs larger than 512x512."""
    return max(1, min(batch_size, batch_size * REFERENCE_TOKENS // max(1, tokens)))


def batch_key(prepared: PreparedImage) -> tuple[int, int]:
    return prepared.pixels.shape[0], prepared.pixels.shape[1]


# -- what the workers run after the model, on the device-finish path --------------------------


def write_stage(
    item: WorkItem,
    mask: np.ndarray,
    confidence: np.ndarray | None,
    cam: np.ndarray | None,
    refined: np.ndarray | None,
    seconds: dict[str, float],
) -> dict:
    """Write one image's files from maps finished on the device; returns the fields of its
    ``Outcome`` (seconds and figures for run.json), as ``stages.finish_stage`` does."""
    spec = stages._current()
    image = load_rgb(spec.images_root / item.rel) if spec.visualize else np.empty((0, 0, 3), np.uint8)
    empty = np.empty((len(item.labels), 0, 0), np.float32)  # maps not asked for are not copied back
    result = LabelResult(
        list(item.labels),
        cam if cam is not None else empty,
        refined if refined is not None else empty,
        mask,
        confidence,
        seconds,
    )
    write_image_outputs(spec.layout, item, image, result, spec.save_cams, spec.visualize)
    return {"seconds": seconds, "figures": image_figures(result)}


# -- the model side ----------------------------------------------------------------------------


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor over ``array`` (copied if read-only, as decoded images can be)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


class _Timer:
    """Marks on the device's timeline (CUDA events) or the host clock; ``seconds`` after the work is done."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        """Seconds between consecutive marks (call once the device passed the last one)."""
        if self.cuda:
            self.marks[-1].synchronize()  # passed already when the batch's copies are in
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


@dataclass
class Launched:
    """A batch whose model work (and maybe finish) is queued on the device, with its copies back."""

    items: list[WorkItem]
    prepared: list[PreparedImage]
    prepare_seconds: list[float]
    copy: HostCopy
    timer: _Timer
    per_image: int  # arrays per image in ``copy``


class BatchRunner:
    """Runs batches through the predictor; ``finish_stage`` is what the workers do afterwards."""

    def __init__(self, predictor: CLIPESPredictor, device_finish: bool, crf: BatchCRF | None, keep_maps: bool) -> None:
        self.predictor = predictor
        self.device_finish = device_finish
        self.crf = crf
        self.keep_maps = keep_maps  # full-size CAMs are written (--save-cams, --visualize)

    @property
    def finish_stage(self) -> Callable[..., dict]:
        return write_stage if self.device_finish else stages.finish_stage

    @torch.inference_mode()
    def launch(self, items: list[WorkItem], prepared: list[tuple[PreparedImage, float]]) -> Launched:
        predictor, device = self.predictor, self.predictor.device
        timer = _Timer(device)
        timer.mark()
        pixels = to_device(torch.from_numpy(np.stack([p.pixels for p, _ in prepared])), device)
        maps = predictor.grid_maps(normalize_pixels(pixels), [item.labels for item in items])
        timer.mark()
        outputs: list[torch.Tensor | None] = []
        if self.device_finish:
            settings = predictor.settings
            crf = self.crf if settings.crf else None
            images = [
                DeviceImage(
                    size=prep.image.shape[:2],
                    work_size=prep.work.shape[:2],
                    work=to_device(_tensor(prep.work), device) if crf is not None else None,
                    lut=to_device(torch.tensor([0, *(1 + c for c in item.labels)], dtype=torch.uint8), device),
                )
                for item, (prep, _) in zip(items, prepared)
            ]
            finished = finish_on_device(images, maps.per_image(), crf, settings.crf_params, settings.mu, self.keep_maps)
            for done in finished:
                outputs += [done.mask, done.confidence, done.cam, done.refined]
            per_image = 4
        else:
            for cam, refined in maps.per_image():
                outputs += [cam, refined]
            per_image = 2
        timer.mark()
        return Launched(items, [p for p, _ in prepared], [s for _, s in prepared], HostCopy(outputs), timer, per_image)

    def collect(self, launched: Launched) -> list[tuple]:
        """Wait for a launched batch; per image, the arguments of ``finish_stage`` after its item."""
        arrays = launched.copy.wait()
        model_s, finish_s = launched.timer.seconds()
        n = len(launched.items)
        args = []
        for i, (prep, prep_s) in enumerate(zip(launched.prepared, launched.prepare_seconds)):
            mine = arrays[i * launched.per_image : (i + 1) * launched.per_image]
            cam_s = prep_s + model_s / n
            if self.device_finish:
                crf_s = finish_s / n
                args.append((*mine, {"cam": cam_s, "crf": crf_s, "total": cam_s + crf_s}))
            else:
                args.append((stages.for_finish(prep), *mine, cam_s + finish_s / n))
        return args


# -- scheduling --------------------------------------------------------------------------------


class InlineExecutor(Executor):
    """Runs each task in ``submit`` (``--workers 0``): the pipeline without worker processes."""

    def submit(self, fn, /, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - handed over like a pool's result
            future.set_exception(exc)
        return future


class BatchPipeline(Pipeline):
    """``scheduler.Pipeline`` whose model stage takes groups of prepared images of one padded size.

    It overrides the pipeline's seam for batching (``_busy``, ``_model_step``, ``_drain_model``)
    and keeps its loop, Ctrl-C handling, pool restarts and stopping errors. The look-ahead is
    the prefetch window: a group runs when it is full, or when every image in the window is
    prepared (then the oldest image's group runs, full or not), so no image waits for more
    than one window. Launched batches are collected one batch later.
    """

    def __init__(
        self,
        make_executor: Callable[[], Executor],
        runner: BatchRunner,
        *,
        prepare: Callable[[WorkItem], Any] = stages.prepare_stage,
        batch_size: int,
        patch: int,
        prefetch: int,
        window: int,
        on_abort: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(
            make_executor, prepare, self._no_single_model, runner.finish_stage,
            prefetch=prefetch, window=window, on_abort=on_abort,
        )  # fmt: skip
        self.runner = runner
        self.batch_size = batch_size
        self.patch = patch
        self._launched: collections.deque[tuple[list[WorkItem], Any]] = collections.deque()  # (items, runner's handle)

    @staticmethod
    def _no_single_model(item: WorkItem, prepared: Any) -> tuple:
        raise AssertionError("BatchPipeline runs the model on groups")

    # -- the seam of scheduler.Pipeline ------------------------------------------------------

    def _busy(self) -> bool:
        return super()._busy() or bool(self._launched)

    def _model_step(self, record: Record) -> None:
        group = self._next_group(record) if len(self._fin) < self.window else None
        if group:
            self._launch(group, record)
            while len(self._launched) > 1:  # keep one batch queued on the device
                self._collect(record)
        elif self._launched:
            self._collect(record)
        elif len(self._fin) < self.window and (waiting := [f for _, f in self._prep if not f.done()]):
            self._wait_and_harvest(record, waiting[0])
        elif self._fin:
            self._wait_and_harvest(record)

    def _drain_model(self, record: Record, stop_now: Callable[[], bool]) -> None:
        """After Ctrl-C the batches the device already has are collected and finished like the
        images being written (within the drain's time; after a second Ctrl-C no more). After
        a stopping error (the disk is full) they are dropped: nothing more is written."""
        while self._launched and self._fatal is None and not stop_now():
            self._collect(record)
        self._launched.clear()

    # -- groups ------------------------------------------------------------------------------

    def _next_group(self, record: Record) -> list[tuple[WorkItem, Any]] | None:
        """The next batch to run from the prepared images, or None (wait for more)."""
        ready: dict[tuple[int, int], list[tuple[WorkItem, Any]]] = {}
        for item, future in list(self._prep):
            if not future.done():
                continue
            try:
                prepared = self._prepared(item, future, record)
            except BrokenExecutor:
                self._restart(record)
                return None
            if prepared is FAILED:
                self._prep.remove((item, future))
                continue
            ready.setdefault(batch_key(prepared[0]), []).append((item, prepared))
        if not ready or self._fatal is not None:
            return None
        head_item, head_future = self._prep[0]
        keys = list(ready)
        if head_future.done():
            keys.remove(key := batch_key(head_future.result()[0]))
            keys.insert(0, key)
        for key in keys:
            if len(ready[key]) >= self._limit(key):
                return self._take(ready[key][: self._limit(key)])
        window_full = not self._pending or len(self._prep) >= self.prefetch
        if head_future.done() and window_full and all(f.done() for _, f in self._prep):
            return self._take(ready[keys[0]][: self._limit(keys[0])])
        return None

    def _limit(self, key: tuple[int, int]) -> int:
        """Images per batch for inputs of padded size ``key`` (one class token and the patch grid)."""
        return images_per_batch(self.batch_size, 1 + (key[0] // self.patch) * (key[1] // self.patch))

    def _take(self, group: list[tuple[WorkItem, Any]]) -> list[tuple[WorkItem, Any]]:
        chosen = {item.rel for item, _ in group}
        self._prep = collections.deque((i, f) for i, f in self._prep if i.rel not in chosen)
        return group

    def _launch(self, group: list[tuple[WorkItem, Any]], record: Record) -> None:
        items = [item for item, _ in group]
        self._in_model += len(items)
        self._note_in_flight()
        try:
            with self._interruptible():
                handle = self.runner.launch(items, [prepared for _, prepared in group])
        except IMAGE_FAILURES as exc:
            self._in_model -= len(items)
            if len(group) == 1:
                record(Outcome.failure(items[0], exc))
                return
            for one in group:  # one image's problem (or memory for the batch): try them alone
                self._launch([one], record)
                while self._launched:
                    self._collect(record)
            return
        self._launched.append((items, handle))

    def _collect(self, record: Record) -> None:
        items, launched = self._launched.popleft()
        self._in_model -= len(items)
        try:
            per_image = self.runner.collect(launched)
        except IMAGE_FAILURES as exc:
            for item in items:
                record(Outcome.failure(item, exc))
            return
        for item, args in zip(items, per_image):
            if self._fatal is not None:
                break  # the run is stopping (the disk is full): nothing more is written
            future = self._submit(self.finish, item, *args)
            self._fin[future] = (item, args)
            if future.done():  # ran here (--workers 0): its stopping error is seen before the next write
                self._harvest(record)
        self._note_in_flight()


def windows(workers: int, batch_size: int) -> tuple[int, int]:
    """(prefetch look-ahead, finish window) for a batch size: two batches ahead, a batch being written."""
    return 2 * batch_size + workers, batch_size + workers + 1


def device_finish_crf(predictor: CLIPESPredictor) -> tuple[bool, BatchCRF | None]:
    """Whether the finish runs on the model's device, and the CRF it uses there.

    Yes when the model runs on a GPU and the CRF backend is torch (``--crf-backend auto``
    there) or there is no CRF; otherwise the workers run ``pipeline.finish`` (pydensecrf).
    """
    settings = predictor.settings
    if predictor.device.type != "cuda" or (settings.crf and settings.crf_backend != "torch"):
        return False, None
    from clipseg_cli.postprocess.crf_torch import dense_crf_torch_batch

    return True, dense_crf_torch_batch


def batched_engine(job: LabelJob, workers: int, batch_size: int, device_finish: bool | None = None, crf: BatchCRF | None = None) -> Engine:
    """An engine for ``LabelJob.run`` that runs the model on batches (``workers`` 0: no worker processes).

    ``device_finish`` None: decided by ``device_finish_crf``; True on a CPU model runs the
    device-finish path on CPU tensors (with ``crf``, default pydensecrf behind tensors: tests).
    """
    if batch_size < 1 or workers < 0:
        raise ValueError("batched_engine needs batch_size >= 1 and workers >= 0")
    predictor = job.predictor
    if predictor is None:
        raise ValueError("batched_engine runs the model here: the job needs a predictor")
    if device_finish is None:
        device_finish, crf = device_finish_crf(predictor)
    elif device_finish and crf is None:
        crf = pydensecrf_on_tensors
    patch = predictor.model.visual.patch_size
    spec = stage_spec(job, predictor)
    runner = BatchRunner(predictor, device_finish, crf, keep_maps=job.save_cams or job.visualize)

    def make_executor() -> Executor:
        if workers == 0:
            stages.set_spec(spec)
            return InlineExecutor()
        return process_pool(workers, spec)

    def engine(items: Sequence[WorkItem], record: Record) -> None:
        prefetch, window = windows(workers, batch_size)
        pipeline = BatchPipeline(
            make_executor, runner, batch_size=batch_size, patch=patch, prefetch=prefetch, window=window,
            on_abort=lambda: remove_stale_parts(job.layout.root),
        )  # fmt: skip
        pipeline.run(items, record)

    return engine
