"""A bounded three-stage pipeline: *prepare* in a pool, *model* in this thread, *finish* in the pool.

The model stays in the calling (main) process, where the weights and the GPU are; decoding
before it and the CRF and file writing after it run in worker processes, overlapping it.

Memory stays flat however many images there are: at most ``prefetch`` images are being
prepared or wait for the model, and at most ``window`` are being finished; when the finish
window is full the model waits (back-pressure) instead of piling results up.

Failures of one image (``labeling.IMAGE_FAILURES``, raised in any stage) are recorded as
that image's outcome and the run goes on. A worker process that dies (killed for memory, a
crash in native code) breaks the pool: a new pool is started and the images that were in
flight are tried again; an image in flight during ``MAX_POOL_BREAKS`` breaks is recorded as
failed. Any other error from a stage (``OutputWriteError``: the disk is full) is recorded for
its image and stops the run like Ctrl-C, then is raised.

Ctrl-C: while ``run`` is going, SIGINT (in the main thread) is caught and acted on at safe
points, never inside the executor's own bookkeeping (a KeyboardInterrupt there could leave a
pool that never shuts down); only the model stage, which is this module's caller's code, is
interrupted at once. Then nothing new starts, the images being finished are waited for (at
most ``DRAIN_SECONDS``) and recorded (their files are complete), the workers are killed
(prepare tasks write nothing), and KeyboardInterrupt goes on. A second Ctrl-C, or the time
limit, kills the workers at once and calls ``on_abort`` (which removes half-written files).
Futures are never cancelled one by one: that races with a breaking pool in
``concurrent.futures`` (InvalidStateError in its manager thread, then a hang at exit).
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, BrokenExecutor, Executor, Future, wait
from typing import Any, Callable, Iterator, Sequence

from clipseg_cli.labeling import IMAGE_FAILURES, Outcome, Record, WorkItem

MAX_POOL_BREAKS = 2
DRAIN_SECONDS = 10.0  # after Ctrl-C, how long the images being finished get
POLL_SECONDS = 0.1  # how often waiting looks for Ctrl-C
FAILED = object()  # ``Pipeline._prepared``: the image failed (recorded), nothing to run

PrepareFn = Callable[[WorkItem], Any]  # runs in the pool
ModelFn = Callable[[WorkItem, Any], tuple]  # runs here: prepared -> finish arguments
FinishFn = Callable[..., dict]  # runs in the pool: (item, *arguments) -> the Outcome's other fields


class CtrlC:
    """SIGINT while a pipeline runs: counted, raised as KeyboardInterrupt only where it is safe.

    Installed for the main thread only (elsewhere no SIGINT arrives); where SIGINT is ignored
    (a run in the background) it stays ignored.
    """

    def __init__(self) -> None:
        self.count = 0
        self.raise_now = False  # True while the model runs: interrupt it at once
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> CtrlC:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (signal.SIG_IGN, None):
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, _signum: int, _frame: object) -> None:
        self.count += 1
        if self.raise_now:
            self.raise_now = False
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt here if Ctrl-C was pressed."""
        if self.count:
            raise KeyboardInterrupt


class Pipeline:
    def __init__(
        self,
        make_executor: Callable[[], Executor],
        prepare: PrepareFn,
        model: ModelFn,
        finish: FinishFn,
        *,
        prefetch: int,
        window: int,
        on_abort: Callable[[], Any] | None = None,
    ) -> None:
        if prefetch < 1 or window < 1:
            raise ValueError("prefetch and window must be at least 1")
        self.make_executor = make_executor
        self.prepare = prepare
        self.model = model
        self.finish = finish
        self.prefetch = prefetch
        self.window = window
        self.on_abort = on_abort
        self.max_in_flight = 0  # the most images held at once (prepare + model + finish)
        self.restarts = 0
        self._in_model = 0
        self._executor: Executor | None = None
        self._pending: collections.deque[WorkItem] = collections.deque()
        self._prep: collections.deque[tuple[WorkItem, Future]] = collections.deque()
        self._fin: dict[Future, tuple[WorkItem, tuple]] = {}
        self._breaks: collections.Counter[str] = collections.Counter()
        self._ctrl_c = CtrlC()
        self._fatal: BaseException | None = None  # a stage's error that stops the run

    # -- driving -------------------------------------------------------------------------

    def run(self, items: Sequence[WorkItem], record: Record) -> None:
        """Label ``items``; ``record`` is called here, once per image, as each one ends."""
        self._pending = collections.deque(items)
        if not self._pending:
            return
        completed = False
        with self._ctrl_c:
            try:
                self._executor = self.make_executor()
                self._loop(record)
                completed = True
            except BaseException:
                self._drain(record)
                raise
            finally:
                self._shutdown(completed)
            self._ctrl_c.check()  # pressed while the idle pool shut down: still an interrupt

    def _loop(self, record: Record) -> None:
        while self._busy():
            self._checkpoint()
            self._harvest(record)
            self._fill()
            self._model_step(record)
        self._checkpoint()

    # -- the seam for batching (scale.batched.BatchPipeline overrides these three) ------------
    #
    # ``_busy``: anything left to do; ``_model_step``: one move of the model stage, run or wait
    # (a short while: Ctrl-C is looked for between moves); ``_drain_model``: after Ctrl-C or a
    # stopping error, what the model stage still holds. A subclass runs its model calls inside
    # ``_interruptible()`` and gets prepared images through ``_prepared``, so Ctrl-C, a broken
    # pool and a stage's stopping error are handled as here.

    def _busy(self) -> bool:
        return bool(self._pending or self._prep or self._fin)

    def _model_step(self, record: Record) -> None:
        """The oldest prepared image through the model, or wait for it or for a finish."""
        if self._prep and len(self._fin) < self.window:
            item, future = self._prep[0]
            if not future.done():
                self._wait_and_harvest(record, future)
                return
            self._prep.popleft()
            self._run_model(item, future, record)
        elif self._fin:
            self._wait_and_harvest(record)

    def _drain_model(self, record: Record, stop_now: Callable[[], bool]) -> None:
        """After Ctrl-C: the image in the model was interrupted, nothing is left to finish here."""

    def _checkpoint(self) -> None:
        """A safe point: act on Ctrl-C, or on a stage's error that stops the run."""
        self._ctrl_c.check()
        if self._fatal is not None:
            raise self._fatal

    def _fill(self) -> None:
        while self._pending and len(self._prep) < self.prefetch:
            item = self._pending.popleft()
            self._prep.append((item, self._submit(self.prepare, item)))
        self._note_in_flight()

    def _run_model(self, item: WorkItem, future: Future, record: Record) -> None:
        try:
            prepared = self._prepared(item, future, record)
        except BrokenExecutor:
            self._prep.appendleft((item, future))
            self._restart(record)
            return
        if prepared is FAILED:
            return
        self._in_model = 1
        self._note_in_flight()
        try:
            with self._interruptible():
                args = self.model(item, prepared)
        except IMAGE_FAILURES as exc:
            record(Outcome.failure(item, exc))
            return
        finally:
            self._in_model = 0
            del prepared
        self._fin[self._submit(self.finish, item, *args)] = (item, args)
        self._note_in_flight()

    def _prepared(self, item: WorkItem, future: Future, record: Record) -> Any:
        """A done prepare task's result, or ``FAILED`` once its failure is recorded (or the run
        is stopping); BrokenExecutor goes on to the caller, which restarts the pool."""
        try:
            return future.result()
        except BrokenExecutor:
            raise
        except IMAGE_FAILURES as exc:
            record(Outcome.failure(item, exc))
        except Exception as exc:  # noqa: BLE001 - not this image's problem: the run stops
            self._stop(item, exc, record)
        return FAILED

    @contextlib.contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Around model calls (this module's caller's code): Ctrl-C interrupts them at once."""
        self._ctrl_c.raise_now = True
        try:
            self._ctrl_c.check()
            yield
        finally:
            self._ctrl_c.raise_now = False

    def _stop(self, item: WorkItem, exc: BaseException, record: Record) -> None:
        record(Outcome.failure(item, exc))
        if self._fatal is None:
            self._fatal = exc

    def _note_in_flight(self) -> None:
        self.max_in_flight = max(self.max_in_flight, len(self._prep) + self._in_model + len(self._fin))

    def _submit(self, fn: Callable, *args: Any) -> Future:
        assert self._executor is not None
        try:
            return self._executor.submit(fn, *args)
        except BrokenExecutor as exc:
            # A finished future carrying the error, so the usual path restarts the pool.
            failed: Future = Future()
            failed.set_exception(exc)
            return failed

    def _wait_and_harvest(self, record: Record, *extra: Future, restart: bool = True) -> None:
        """Wait (a short while) until one of ``extra`` or of the images being finished is done, then harvest."""
        waiting = [*extra, *self._fin]
        if waiting:
            wait(waiting, timeout=POLL_SECONDS, return_when=FIRST_COMPLETED)
        self._harvest(record, restart)

    def _harvest(self, record: Record, restart: bool = True) -> None:
        """Record the images whose finish is done (without waiting)."""
        broken = False
        for future in [f for f in self._fin if f.done()]:
            item = self._fin[future][0]
            try:
                fields = future.result()
            except BrokenExecutor:
                broken = True
                continue  # stays in _fin: tried again by _restart
            except IMAGE_FAILURES as exc:
                del self._fin[future]
                record(Outcome.failure(item, exc))
                continue
            except Exception as exc:  # noqa: BLE001 - not this image's problem: the run stops
                del self._fin[future]
                self._stop(item, exc, record)
                continue
            del self._fin[future]
            record(Outcome(item, **fields))
        if broken and restart:
            self._restart(record)
        elif broken:
            self._fin = {f: v for f, v in self._fin.items() if not f.done()}

    # -- a worker died -------------------------------------------------------------------

    def _restart(self, record: Record) -> None:
        """Replace a broken pool; resubmit what was in flight, fail what was in too many breaks."""
        old = self._executor
        assert old is not None
        with contextlib.suppress(Exception):
            old.shutdown(wait=False, cancel_futures=True)
        self._executor = self.make_executor()
        self.restarts += 1

        def broke(future: Future) -> bool:
            return future.done() and not future.cancelled() and isinstance(future.exception(), BrokenExecutor)

        def give_up(item: WorkItem) -> bool:
            self._breaks[item.rel] += 1
            if self._breaks[item.rel] < MAX_POOL_BREAKS:
                return False
            reason = f"worker process died {self._breaks[item.rel]} times while this image was in flight"
            record(Outcome(item, error=f"RuntimeError: {reason}"))
            return True

        prep: collections.deque[tuple[WorkItem, Future]] = collections.deque()
        for item, future in self._prep:
            if not broke(future) and future.done():
                prep.append((item, future))  # its result (or its own error) is still good
            elif not give_up(item):
                prep.append((item, self._submit(self.prepare, item)))
        fin: dict[Future, tuple[WorkItem, tuple]] = {}
        for future, (item, args) in self._fin.items():
            if not broke(future) and future.done():
                fin[future] = (item, args)
            elif not give_up(item):
                fin[self._submit(self.finish, item, *args)] = (item, args)
        self._prep, self._fin = prep, fin

    # -- stopping ------------------------------------------------------------------------

    def _drain(self, record: Record) -> None:
        """After Ctrl-C (or a stopping error): start nothing new, record the images being finished.

        The images waiting for the model are dropped (their prepare tasks write nothing and
        die with the workers). A second Ctrl-C, or ``DRAIN_SECONDS``, aborts.
        """
        self._pending.clear()
        self._prep.clear()
        presses = self._ctrl_c.count
        deadline = time.monotonic() + DRAIN_SECONDS

        def stop_now() -> bool:
            return self._ctrl_c.count > presses or time.monotonic() > deadline

        try:
            self._drain_model(record, stop_now)
            while self._fin:
                if stop_now():
                    self._abort()
                    return
                self._wait_and_harvest(record, restart=False)
        except KeyboardInterrupt:
            self._abort()

    def _abort(self) -> None:
        """Kill the workers now; their half-written files go with ``on_abort``."""
        self._kill_workers()
        self._fin.clear()
        if self.on_abort is not None:
            self.on_abort()

    def _kill_workers(self) -> None:
        """SIGKILL every worker process and reap it; the executor is dropped (never waited on)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(timeout=5)
        with contextlib.suppress(Exception):
            executor.shutdown(wait=False, cancel_futures=True)
        manager = getattr(executor, "_executor_manager_thread", None)
        if isinstance(manager, threading.Thread):
            manager.join(timeout=5)  # it notices the dead workers and ends; at exit it is joined again

    def _shutdown(self, completed: bool) -> None:
        if not completed:
            self._kill_workers()  # nothing of value in flight: drained, or aborted
            return
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)  # the workers are idle
