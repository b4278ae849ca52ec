"""Progress callbacks of a training run. The library calls them; the CLI draws them."""

from __future__ import annotations

from typing import Protocol


class Reporter(Protocol):
    def message(self, text: str) -> None:
        """A line for the user (a warning starts with ``warning:``)."""

    def start(self, done: int, total: int) -> None:
        """The loop starts at iteration ``done`` of ``total``."""

    def step(self, iteration: int, loss: float, lr: float, it_per_s: float) -> None:
        """Iteration ``iteration`` finished with ``loss`` at learning rate ``lr``."""


class QuietReporter:
    """A Reporter that says nothing (library use, tests)."""

    def message(self, text: str) -> None:
        pass

    def start(self, done: int, total: int) -> None:
        pass

    def step(self, iteration: int, loss: float, lr: float, it_per_s: float) -> None:
        pass
