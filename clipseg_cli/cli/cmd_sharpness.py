"""Placeholder: this command is registered by its own issue's work."""

import typer


def register(app: typer.Typer) -> None:
    return None
