"""Progress that reads well on a terminal and in a log file, the same for every long command.

On a terminal: a Rich bar with the count, the rate (images/s, it/s), failures so far, elapsed
and remaining time; lines printed with :meth:`Progress.echo` (e.g. a failed image) appear above
the bar as they happen.

Anywhere else (stderr redirected to a file, nohup, SLURM, a pipe): no bar and no cursor tricks;
one plain line per task every ``WSSS_LABEL_PROGRESS_SECONDS`` seconds (default 10), when the task
starts and when it ends, such as::

    labelling 120/10582 (1.1%) 3.2 images/s ETA 54m12s failed 1

and each :meth:`Progress.echo` line on its own, unwrapped, as it happens.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.progress import Task as RichTask
from rich.text import Text

from clipseg_cli.cli.console import console as default_console

INTERVAL_ENV = "WSSS_LABEL_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0


def plain_interval() -> float:
    """Seconds between two plain progress lines: $WSSS_LABEL_PROGRESS_SECONDS, else 10."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """``12s``, ``54m12s``, ``2h03m``, ``3d04h``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_rate(rate: float) -> str:
    """Two or three significant figures: ``0.25``, ``3.2``, ``41``."""
    if rate >= 10:
        return f"{rate:.0f}"
    if rate >= 1:
        return f"{rate:.1f}"
    return f"{rate:.2f}"


def _count(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


@dataclass
class TaskState:
    """One task's numbers, and its plain line."""

    description: str
    total: float | None
    unit: str
    count_failures: bool
    completed: float = 0.0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    start_completed: float = 0.0
    rate: float | None = None  # given by the caller (e.g. the trainer's it/s); else measured
    fields: dict[str, str] = field(default_factory=dict)
    finished: bool = False

    def measured_rate(self, now: float) -> float | None:
        if self.rate is not None:
            return self.rate
        elapsed = now - self.started
        done = self.completed - self.start_completed
        return done / elapsed if elapsed > 0 and done > 0 else None

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        parts = [self.description]
        if self.total:
            share = 100.0 * min(self.completed, self.total) / self.total
            parts.append(f"{_count(self.completed)}/{_count(self.total)} ({share:.1f}%)")
        else:
            parts.append(_count(self.completed))
        rate = self.measured_rate(now)
        if rate:
            parts.append(f"{format_rate(rate)} {self.unit}/s")
        if self.finished:
            parts.append(f"in {format_duration(now - self.started)}")
        elif rate and self.total:
            parts.append(f"ETA {format_duration(max(0.0, self.total - self.completed) / rate)}")
        parts += [f"{name} {value}" for name, value in self.fields.items() if value not in ("", None)]
        if self.count_failures:
            parts.append(f"failed {self.failed}")
        return " ".join(parts)


class Task:
    """A handle on one line of a :class:`Progress`."""

    def __init__(self, progress: Progress, state: TaskState, rich_id: Any = None) -> None:
        self._progress = progress
        self.state = state
        self._rich_id = rich_id

    def advance(self, n: float = 1, failed: bool = False) -> None:
        """``n`` more done; ``failed``: one of them failed."""
        self.update(completed=self.state.completed + n, failed=self.state.failed + int(failed))

    def update(
        self,
        *,
        total: float | None = None,
        completed: float | None = None,
        failed: int | None = None,
        rate: float | None = None,
        **fields: str,
    ) -> None:
        state = self.state
        starting = total is not None and not state.total
        with self._progress.lock:
            if total is not None:
                state.total = total
            if completed is not None:
                state.completed = completed
            if failed is not None:
                state.failed = failed
            if rate is not None:
                state.rate = rate
            state.fields.update({k: str(v) for k, v in fields.items()})
        self._progress._changed(self, starting)

    def finish(self) -> None:
        """The task is over: its last line (plain mode) is printed now."""
        if not self.state.finished:
            self.state.finished = True
            self._progress._finished(self)


class _RateColumn(ProgressColumn):
    """``3.2 images/s``: the caller's rate if it gives one, else Rich's estimate."""

    def render(self, task: RichTask) -> Text:
        state: TaskState | None = task.fields.get("_state")
        rate = state.rate if state is not None and state.rate is not None else task.speed
        unit = state.unit if state is not None else "it"
        return Text(f"{format_rate(rate)} {unit}/s" if rate else "", style="progress.data.speed")


class _FieldsColumn(ProgressColumn):
    """The task's extra fields (``loss 0.4321 lr 1.2e-04``) and its failures, in red."""

    def render(self, task: RichTask) -> Text:
        state: TaskState | None = task.fields.get("_state")
        text = Text()
        if state is None:
            return text
        text.append(" ".join(f"{k} {v}" for k, v in state.fields.items() if v not in ("", None)))
        if state.count_failures and state.failed:
            text.append((" " if text else "") + f"failed {state.failed}", style="red")
        return text


class Progress:
    """Progress of one or more tasks; a context manager. ``plain`` None: plain unless stderr is a terminal."""

    def __init__(self, console: Console | None = None, plain: bool | None = None, interval: float | None = None) -> None:
        self.console = console or default_console
        self.plain = (not self.console.is_terminal) if plain is None else plain
        self.interval = plain_interval() if interval is None else interval
        self.lock = threading.RLock()
        self.tasks: list[Task] = []
        self._rich: RichProgress | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------
    def __enter__(self) -> Progress:
        if self.plain:
            self._thread = threading.Thread(target=self._tick, name="wsss-label-progress", daemon=True)
            self._thread.start()
        else:
            self._rich = RichProgress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                _FieldsColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if exc[0] is None:  # a normal end: the tasks not finished yet end here
            for task in self.tasks:
                task.finish()
        if self._rich is not None:
            self._rich.__exit__(*exc)  # type: ignore[arg-type]
            self._rich = None

    # -- tasks ---------------------------------------------------------------------------------
    def add(
        self,
        description: str,
        total: float | None = None,
        *,
        unit: str = "images",
        completed: float = 0,
        count_failures: bool = False,
        **fields: str,
    ) -> Task:
        """A new task; in plain mode its first line is printed when its total is known."""
        state = TaskState(description, total, unit, count_failures, completed=completed, start_completed=completed,
                          fields={k: str(v) for k, v in fields.items()})  # fmt: skip
        rich_id = None
        if self._rich is not None:
            rich_id = self._rich.add_task(description, total=total, completed=completed, _state=state)
        task = Task(self, state, rich_id)
        with self.lock:
            self.tasks.append(task)
        if self.plain and total:
            self._print(state.line())
        return task

    def echo(self, text: str, style: str | None = None) -> None:
        """Print ``text`` literally on its own line, now (above the bar on a terminal)."""
        line = Text(text, style=style or "")
        with self.lock:
            target = self._rich.console if self._rich is not None else self.console
            target.print(line, soft_wrap=True, highlight=False)

    # -- internals -----------------------------------------------------------------------------
    def _print(self, line: str) -> None:
        with self.lock:
            self.console.print(Text(line), soft_wrap=True, highlight=False)

    def _changed(self, task: Task, starting: bool = False) -> None:
        if self.plain and starting:  # the total just became known: the task's first line
            self._print(task.state.line())
        if self._rich is not None and task._rich_id is not None:
            state = task.state
            self._rich.update(task._rich_id, total=state.total, completed=state.completed)

    def _finished(self, task: Task) -> None:
        if self.plain:
            self._print(task.state.line())
        elif self._rich is not None and task._rich_id is not None:
            state = task.state
            total = state.total if state.total is not None else state.completed
            self._rich.update(task._rich_id, total=total, completed=state.completed)
            self._rich.stop_task(task._rich_id)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            with self.lock:
                lines = [t.state.line(now) for t in self.tasks if not t.state.finished]
            for line in lines:
                self._print(line)


def echo(text: str, style: str | None = None, console: Console | None = None) -> None:
    """Print ``text`` literally on one line (no markup, no wrapping) on the shared console."""
    (console or default_console).print(Text(text, style=style or ""), soft_wrap=True, highlight=False)


@contextlib.contextmanager
def loading(what: str, console: Console | None = None) -> Iterator[None]:
    """A "loading the model" status while ``what`` loads: a spinner on a terminal, one line in a log."""
    target = console or default_console
    if target.is_terminal:
        with target.status(escape(what)):
            yield
    else:
        echo(what, console=target)
        yield


def failure_line(image: str, reason: str) -> str:
    """The line of one failed image, as printed while a run goes on (greppable: starts with "failed")."""
    return f"failed {image}: {reason}"


__all__: Sequence[str] = ("Progress", "Task", "echo", "failure_line", "format_duration", "format_rate", "loading")
