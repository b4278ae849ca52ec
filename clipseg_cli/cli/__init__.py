"""The `wsss-label` command line: a Typer app whose default command is `label`.

Each sub-command lives in its own module with a ``register(app)`` function.
"""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

import typer

from clipseg_cli import __version__
from clipseg_cli.cli import conventions as cv

COMMAND_MODULES = ("label", "evaluate", "eval_labels", "reproduce", "sharpness", "retrain", "report", "refine", "train_cam")
DEFAULT_COMMAND = "label"

app = cv.make_app(
    name="wsss-label",
    help="Pixel pseudo masks from image-level labels with a frozen CLIP (CLIP-ES), no training.\n\n"
    "Run `wsss-label IMAGES --labels LABELS --out OUT` (same as `wsss-label label ...`).\n\n"
    "When stderr is not a terminal, progress is a plain line every $WSSS_LABEL_PROGRESS_SECONDS (default 10) seconds.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsss-label {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Pixel pseudo masks from image-level labels with a frozen CLIP (CLIP-ES)."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"clipseg_cli.cli.cmd_{_name}").register(app)


def _command_names() -> set[str]:
    names = set()
    for info in app.registered_commands:
        names.add(info.name or info.callback.__name__.replace("_", "-"))
    for group in app.registered_groups:
        names.add(group.name or "")
    return names


def route_default(argv: Sequence[str]) -> list[str]:
    """`wsss-label IMAGES ...` means `wsss-label label IMAGES ...`; a word that is no path but
    resembles a command (`evl`) is left for the app to answer "no such command, did you mean"."""
    args = list(argv)
    if args and not args[0].startswith("-") and args[0] not in _command_names():
        if cv.looks_like_path(args[0]) or cv.suggest_command(args[0], sorted(_command_names())) is None:
            return [DEFAULT_COMMAND, *args]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = route_default(sys.argv[1:] if argv is None else argv)
    app(args=args, prog_name="wsss-label")
