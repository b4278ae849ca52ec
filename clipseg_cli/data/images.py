"""Finding images in a folder and decoding any of them to an upright 8-bit RGB array."""

from __future__ import annotations

import os
import posixpath
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipseg_cli.errors import ConfigError, ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Refuse decompression bombs but allow large photographs (they are scaled down by --max-side).
Image.MAX_IMAGE_PIXELS = 400_000_000


def find_images(root: Path, exclude: Path | None = None) -> list[str]:
    """Relative POSIX paths of the images under ``root``, sorted; hidden entries and ``exclude`` skipped."""
    root = root.resolve()
    excluded = exclude.resolve() if exclude is not None else None
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (excluded is None or (current / d).resolve() != excluded))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append((current / name).relative_to(root).as_posix())
    return sorted(found)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer or float samples of any depth to 0..255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    top = 65535.0 if int(arr.max(initial=0)) > 255 else 255.0
    return np.clip(arr.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB: grey replicated, alpha dropped, CMYK/palette converted."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _to_uint8(np.asarray(img))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in ("P", "PA", "LA", "La"):
        img = img.convert("RGBA")  # resolves the palette / grey first; the alpha goes next
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_rgb(path: Path) -> np.ndarray:
    """Decode ``path``, apply its EXIF orientation, return (H, W, 3) uint8 RGB; ImageError if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = pil_to_rgb(upright)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except UnidentifiedImageError:
        raise ImageError("not a readable image (corrupt, empty or unknown format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large to decode safely: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError("image has no pixels")
    return rgb


# EXIF orientations that swap width and height.
_TRANSPOSING = {5, 6, 7, 8}


def list_images(root: Path) -> dict[str, Path]:
    """Images under ``root`` (a folder, searched recursively, or one file) by relative path without extension."""
    root = Path(root)
    if root.is_file():
        return {root.stem: root}
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    found: dict[str, Path] = {}
    for rel in find_images(root):
        key = posixpath.splitext(rel)[0]
        if key in found:
            raise ConfigError(f"{root}: two images share the name {key!r} ({found[key].name}, {Path(rel).name})")
        found[key] = root / rel
    return found


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, EXIF orientation applied; ImageError naming the file."""
    try:
        return load_rgb(path)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, read from the header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except Exception as exc:
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__})") from None
    return (h, w) if orientation in _TRANSPOSING else (w, h)
