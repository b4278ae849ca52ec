"""`wsss-label train-cam METHOD ...`: train a learned CAM generator from image-level labels."""

from __future__ import annotations

import importlib

import typer

from clipseg_cli.cam_generators import METHODS
from clipseg_cli.cli.conventions import make_app


def register(app: typer.Typer) -> None:
    group = make_app(
        help="Train a learned CAM generator (CLIMS, DALNet, ViT-PCM) from image-level labels; "
        "predict its masks with `wsss-label predict IMAGES --checkpoint RUN/last.pt --labels LABELS`.",
    )
    for method in METHODS:
        importlib.import_module(f"clipseg_cli.cli.train_cam_{method}").register(group)
    if group.registered_commands:
        app.add_typer(group, name="train-cam")
