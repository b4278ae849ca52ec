"""Review pictures: image | mask overlay | one CAM heat map per label, side by side, and a
colour key of the mask under them."""

from __future__ import annotations

import os
from typing import Sequence

import cv2
import numpy as np

from clipseg_cli.io.atomic import write_bytes
from clipseg_cli.io.legend import legend_image
from clipseg_cli.io.masks import IGNORE_LABEL, voc_palette

TILE_HEIGHT = 320
IGNORED_KEY = (224, 224, 224)  # what ignored pixels blend towards in the overlay


def colorize_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) RGB in the VOC palette."""
    return voc_palette()[mask]


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colours over the image; background stays as it is, ignored pixels are grey-white."""
    colours = colorize_mask(mask).astype(np.float32)
    out = image.astype(np.float32)
    painted = mask != 0
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[painted]
    out[mask == IGNORE_LABEL] = 0.3 * out[mask == IGNORE_LABEL] + 0.7 * 224
    return out.astype(np.uint8)


def heatmap(image: np.ndarray, cam: np.ndarray) -> np.ndarray:
    jet = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return (0.5 * image + 0.5 * cv2.cvtColor(jet, cv2.COLOR_BGR2RGB)).astype(np.uint8)


def _shrink(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """``array`` resized to ``size`` (w, h): area averaging, or nearest for label maps."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _caption(tile: np.ndarray, caption: str) -> np.ndarray:
    bar = np.full((24, tile.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile], axis=0)


def mask_key(mask: np.ndarray, labels: Sequence[int], names: Sequence[str]) -> list[tuple[str, tuple[int, int, int]]]:
    """The colour key of the overlay: each label's palette colour (mask value 1 + class index),
    then ignored (255) if the mask has any; background is left unpainted."""
    palette = voc_palette()
    entries = [(name, tuple(int(c) for c in palette[1 + int(label)])) for label, name in zip(labels, names)]
    if (mask == IGNORE_LABEL).any():
        entries.append(("ignored (255)", IGNORED_KEY))
    return entries  # type: ignore[return-value]


def compose(image: np.ndarray, mask: np.ndarray, cams: np.ndarray, names: Sequence[str], labels: Sequence[int] | None = None) -> np.ndarray:
    """The picture; with ``labels`` (class indices, in the order of ``names``) a colour key under it.

    Image, mask and CAMs are scaled to the tile height first, so a large image costs no
    full-size blends (the picture is for review, not a measured output).
    """
    height, width = image.shape[:2]
    size = (max(1, round(width * TILE_HEIGHT / height)), TILE_HEIGHT)
    small = _shrink(image, size)
    tiles = [_caption(small, "image"), _caption(overlay(small, _shrink(mask, size, nearest=True)), "mask")]
    for cam, name in zip(cams, names):
        tiles.append(_caption(heatmap(small, _shrink(np.ascontiguousarray(cam, dtype=np.float32), size)), f"CAM {name}"))
    gap = np.full((TILE_HEIGHT + 24, 4, 3), 255, np.uint8)
    row = [tiles[0]]
    for t in tiles[1:]:
        row += [gap, t]
    picture = np.concatenate(row, axis=1)
    if labels is None:
        return picture
    key = np.asarray(legend_image(mask_key(mask, labels, names), picture.shape[1]))
    return np.concatenate([picture, key], axis=0)


def save_visualization(
    dest: str | os.PathLike[str],
    image: np.ndarray,
    mask: np.ndarray,
    cams: np.ndarray,
    names: Sequence[str],
    labels: Sequence[int] | None = None,
) -> None:
    picture = compose(image, mask, cams, names, labels)
    ok, data = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError("PNG encoding failed")
    write_bytes(dest, data.tobytes())
