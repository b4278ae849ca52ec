"""`wsss-label train-cam METHOD ...`: train a learned CAM generator from image-level labels; one
command per CAM method of the registry (:mod:`clipseg_cli.methods`)."""

from __future__ import annotations

import typer

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.train_commands import register_family


def register(app: typer.Typer) -> None:
    group = cv.make_app(
        help="Train a learned CAM generator (CLIMS, DALNet, ViT-PCM) from image-level labels; "
        "predict its masks with `wsss-label predict IMAGES --checkpoint RUN/last.pt --labels LABELS`.",
    )
    register_family(group, "cam")
    if group.registered_commands:
        app.add_typer(group, name="train-cam")
