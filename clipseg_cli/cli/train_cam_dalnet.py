"""Placeholder until this method's issue is done: adds no command."""

import typer


def register(group: typer.Typer) -> None:
    return None
