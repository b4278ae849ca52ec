"""The --workers scheduler on its own: bounded in-flight windows, every image recorded once,
failures in any stage, a worker process that dies.

This module imports only the standard library and pytest at the top: the process-pool tests
send its functions to spawned workers, which import it (not torch) to find them.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Item:
    """Stands in for labeling.WorkItem (the scheduler only reads ``rel``)."""

    rel: str


class Counter:
    """Images between the start of their prepare and the end of their finish."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def _stages(counter: Counter, finish_seconds: float = 0.0):
    def prepare(item: Item) -> str:
        counter.enter()
        if item.rel == "bad-prepare":
            counter.leave()
            raise ValueError("cannot decode")
        return f"prepared {item.rel}"

    def model(item: Item, prepared: str) -> tuple:
        assert prepared == f"prepared {item.rel}"
        if item.rel == "bad-model":
            counter.leave()
            raise RuntimeError("model failed\nsecond line")
        return (len(item.rel),)

    def finish(item: Item, n: int) -> dict:
        try:
            time.sleep(finish_seconds)
            if item.rel == "bad-finish":
                raise OSError("disk full")
            return {"seconds": {"cam": 0.0, "crf": float(n), "total": float(n)}}
        finally:
            counter.leave()

    return prepare, model, finish


@pytest.mark.parametrize("workers", [1, 3])
def test_in_flight_is_bounded_and_every_item_is_recorded_once(workers: int) -> None:
    from clipseg_cli.scale.scheduler import Pipeline
    from clipseg_cli.scale.workers import windows

    counter = Counter()
    prepare, model, finish = _stages(counter, finish_seconds=0.002)
    items = [Item(f"{i:03d}") for i in range(200)] + [Item("bad-prepare"), Item("bad-model"), Item("bad-finish")]
    prefetch, window = windows(workers)
    pipeline = Pipeline(lambda: ThreadPoolExecutor(workers), prepare, model, finish, prefetch=prefetch, window=window)
    outcomes = []
    pipeline.run(items, outcomes.append)

    assert sorted(o.item.rel for o in outcomes) == sorted(i.rel for i in items)
    errors = {o.item.rel: o.error for o in outcomes if o.error}
    assert errors == {
        "bad-prepare": "ValueError: cannot decode",
        "bad-model": "RuntimeError: model failed",
        "bad-finish": "OSError: disk full",
    }
    assert all(o.seconds == {"cam": 0.0, "crf": 3.0, "total": 3.0} for o in outcomes if not o.error)
    bound = prefetch + 1 + window  # waiting or being prepared, in the model, being finished
    assert 2 <= pipeline.max_in_flight <= bound
    assert counter.most <= bound
    assert counter.now == 0


def test_slow_finish_holds_the_model_back() -> None:
    """Back-pressure: when finishing is the bottleneck the window stays full, never overfull."""
    from clipseg_cli.scale.scheduler import Pipeline

    counter = Counter()
    prepare, model, finish = _stages(counter, finish_seconds=0.01)
    pipeline = Pipeline(lambda: ThreadPoolExecutor(2), prepare, model, finish, prefetch=2, window=2)
    outcomes = []
    pipeline.run([Item(str(i)) for i in range(40)], outcomes.append)
    assert len(outcomes) == 40 and not any(o.error for o in outcomes)
    assert counter.most <= 2 + 1 + 2


def test_keyboard_interrupt_records_what_was_being_finished_then_stops() -> None:
    from clipseg_cli.scale.scheduler import Pipeline

    counter = Counter()
    prepare, _model, finish = _stages(counter, finish_seconds=0.05)
    calls = []

    def model(item: Item, prepared: str) -> tuple:
        calls.append(item.rel)
        if len(calls) == 5:
            counter.leave()
            raise KeyboardInterrupt
        return (1,)

    pipeline = Pipeline(lambda: ThreadPoolExecutor(2), prepare, model, finish, prefetch=2, window=3)
    outcomes = []
    with pytest.raises(KeyboardInterrupt):
        pipeline.run([Item(str(i)) for i in range(50)], outcomes.append)
    # The four images past the model were finished and recorded; nothing after the fifth started.
    assert sorted(o.item.rel for o in outcomes) == sorted(calls[:4])
    assert len(calls) == 5


def test_a_second_interrupt_while_draining_aborts_at_once() -> None:
    from clipseg_cli.scale.scheduler import Pipeline

    counter = Counter()
    prepare, _model, finish = _stages(counter, finish_seconds=0.2)
    calls, aborted = [], []

    def model(item: Item, prepared: str) -> tuple:
        calls.append(item.rel)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the first Ctrl-C
        return (1,)

    def record(outcome) -> None:
        raise KeyboardInterrupt  # the second, while the finished images are being recorded

    pipeline = Pipeline(lambda: ThreadPoolExecutor(2), prepare, model, finish, prefetch=2, window=3, on_abort=lambda: aborted.append(1))
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run([Item(str(i)) for i in range(20)], record)
    assert aborted == [1]
    assert len(calls) == 3
    assert time.perf_counter() - started < 5


# -- a real process pool whose worker dies ---------------------------------------------------


def _prepare_in_process(item: Item) -> str:
    return f"prepared {item.rel}"


def _model_here(item: Item, prepared: str) -> tuple:
    return (os.environ.get("SCALE_TEST_MARKERS", ""),)


def _finish_crashing(item: Item, markers: str) -> dict:
    """Kills its worker process for "boom": once (a marker file remembers), or always for "doom"."""
    if item.rel in ("boom", "doom"):
        marker = Path(markers) / item.rel
        if item.rel == "doom" or not marker.exists():
            marker.touch()
            os._exit(3)
    return {"seconds": {"cam": 0.0, "crf": 0.0, "total": 0.0}}


def _spawn_pool(workers: int):
    return lambda: ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def test_a_dead_worker_is_replaced_and_its_images_retried(tmp_path: Path, monkeypatch) -> None:
    from clipseg_cli.scale.scheduler import MAX_POOL_BREAKS, Pipeline

    monkeypatch.setenv("SCALE_TEST_MARKERS", str(tmp_path))
    items = [Item(r) for r in ["a", "b", "boom", "c", "d", "doom", "e", "f"]]
    pipeline = Pipeline(_spawn_pool(1), _prepare_in_process, _model_here, _finish_crashing, prefetch=1, window=1)
    outcomes = []
    pipeline.run(items, outcomes.append)

    assert sorted(o.item.rel for o in outcomes) == sorted(i.rel for i in items)
    errors = {o.item.rel: o.error for o in outcomes if o.error}
    assert "boom" not in errors  # died once, then done by the new pool
    assert "worker process died" in errors["doom"]
    assert set(errors) <= {"doom", "e"}  # at most the image queued behind the culprit also fails
    assert {"a", "b", "c", "d"}.isdisjoint(errors)
    assert pipeline.restarts == 1 + MAX_POOL_BREAKS
