"""A training progress bar on the shared console: loss, learning rate and speed beside the count."""

from __future__ import annotations

from rich.progress import Progress

from clipseg_cli.cli.console import console, progress_bar


def training_progress() -> Progress:
    return progress_bar("loss {task.fields[loss]}", "lr {task.fields[lr]}", "{task.fields[speed]}")


class TrainingReporter:
    """Training progress on the shared Rich console: loss, lr and it/s (or s/it) beside the bar."""

    def __init__(self, progress) -> None:  # type: ignore[no-untyped-def]
        self.progress = progress
        self.task = None

    def message(self, text: str) -> None:
        console.print(text, soft_wrap=True)

    def start(self, done: int, total: int) -> None:
        self.task = self.progress.add_task("training", total=total, completed=done, loss="-", lr="-", speed="")

    def step(self, iteration: int, loss: float, lr: float, it_per_s: float) -> None:
        speed = f"{it_per_s:.2f} it/s" if it_per_s >= 1 else f"{1 / max(it_per_s, 1e-9):.1f} s/it"
        self.progress.update(self.task, completed=iteration, loss=f"{loss:.4f}", lr=f"{lr:.2e}", speed=speed)
