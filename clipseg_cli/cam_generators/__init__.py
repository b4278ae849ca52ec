"""Learned CAM generators (``wsss-label train-cam METHOD``): networks trained from image-level
labels whose class maps become pseudo masks (CLIMS, DALNet, ViT-PCM).

Each method lives in its own module ``clipseg_cli.cam_generators.<method>`` with a
``load_predictor(checkpoint, device, options)`` for ``wsss-label predict`` (checkpoint kind
``cam.<method>``) and its CLI in ``clipseg_cli.cli.train_cam_<method>`` (a ``register(group)``
adding the ``train-cam <method>`` command). This module is plain data, read at start-up.
"""

from __future__ import annotations

METHODS: tuple[str, ...] = ("clims", "dalnet", "vitpcm")
KIND_PREFIX = "cam."


def generator_kind(method: str) -> str:
    """The checkpoint ``kind`` of a CAM generator, e.g. ``cam.clims``."""
    return f"{KIND_PREFIX}{method}"


def predictor_entries() -> dict[str, str]:
    """``kind -> "module:function"`` entries for :data:`clipseg_cli.segmentation.predict.PREDICTORS`."""
    return {generator_kind(m): f"clipseg_cli.cam_generators.{m}:load_predictor" for m in METHODS}
