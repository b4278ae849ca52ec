"""Training progress on the shared console: loss, learning rate and speed beside the count.

The same :class:`~clipseg_cli.cli.progress.Progress` as every long command: a bar on a terminal,
plain lines at a steady pace in a log (``training 1200/20000 (6.0%) 2.1 it/s ETA 2h13m loss ...``).
"""

from __future__ import annotations

from clipseg_cli.cli.progress import Progress, Task


class TrainingReporter:
    """What a trainer reports to (``message``, ``start``, ``step``), shown by a :class:`Progress`."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Task | None = None

    def message(self, text: str) -> None:
        self.progress.echo(text)

    def start(self, done: int, total: int) -> None:
        self.task = self.progress.add("training", total=total, completed=done, unit="it", loss="-", lr="-")

    def step(self, iteration: int, loss: float, lr: float, it_per_s: float) -> None:
        if self.task is None:
            return
        self.task.update(completed=iteration, rate=it_per_s, loss=f"{loss:.4f}", lr=f"{lr:.2e}")
