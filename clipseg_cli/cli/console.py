"""Shared terminal plumbing: the stderr console and one-line errors with exit codes.

Lines are never wrapped by Rich (``soft_wrap``): a message is one line in a log file, whatever
its length, so grep finds it whole; a terminal wraps it for the eye. Progress: :mod:`.progress`.
"""

from __future__ import annotations

import functools
from typing import Callable, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from clipseg_cli.errors import EXIT_INTERRUPTED, WsssError

console = Console(stderr=True, highlight=False, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


def print_error(message: str) -> None:
    """Print ``error: message`` on one line (every command's errors look so)."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fail(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` on one line and return the Exit to raise."""
    print_error(message)
    return typer.Exit(code)


RESUME_HINT = "interrupted; finished files are kept, rerun to resume"


def handle_errors(
    func: Callable[P, R] | None = None, *, interrupted: str = RESUME_HINT
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn WsssError and Ctrl-C into one line and an exit code instead of a traceback.

    Use as ``@handle_errors`` or ``@handle_errors(interrupted="what Ctrl-C leaves behind")``.
    """
    if func is None:
        return functools.partial(handle_errors, interrupted=interrupted)  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except WsssError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail(interrupted, EXIT_INTERRUPTED) from None

    return wrapper


def warn(message: str) -> None:
    """Print ``warning: message`` on one line (the run goes on)."""
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
