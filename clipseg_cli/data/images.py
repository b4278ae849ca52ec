"""Finding images in a folder and decoding any of them to an upright 8-bit RGB array."""

from __future__ import annotations

import os
import posixpath
import stat
import warnings
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clipseg_cli.data.limits import DEFAULT_MAX_PIXELS, PILLOW_PIXEL_LIMIT
from clipseg_cli.errors import ConfigError, ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

# Refuse decompression bombs but allow large photographs (they are scaled down by --max-side).
Image.MAX_IMAGE_PIXELS = PILLOW_PIXEL_LIMIT // 2

_SPECIAL_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)


def not_regular_reason(mode: int) -> str | None:
    """``None`` for a regular file, else the per-image failure for a file of this ``st_mode``."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a plain file")
    return f"not a regular file ({kind})"


def special_file_reason(path: Path) -> str | None:
    """Why ``path`` (links followed) cannot be an image file without opening it, or ``None``."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: decoding says so
    return not_regular_reason(mode)


def open_image_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading without ever blocking; ImageError unless it is a regular file.

    A named pipe would block ``open`` until some process writes to it (forever, in practice),
    a device could be read without end: neither is opened as an image.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except OSError as exc:
        raise ImageError(f"cannot open image: {exc.strerror or exc}") from None
    try:
        reason = not_regular_reason(os.fstat(fd).st_mode)
        if reason is not None:
            raise ImageError(reason)
        if flags & getattr(os, "O_NONBLOCK", 0):
            import fcntl

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def find_images(root: Path, exclude: Path | Iterable[Path] | None = None) -> list[str]:
    """Relative POSIX paths of the images under ``root``, sorted; hidden entries and the
    folders in ``exclude`` (an output folder, or the output subfolders when output goes to
    ``root`` itself) skipped."""
    root = root.resolve()
    if isinstance(exclude, (str, os.PathLike)):
        exclude = [Path(exclude)]
    excluded = {Path(p).resolve() for p in exclude or ()}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (current / d).resolve() not in excluded)
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append((current / name).relative_to(root).as_posix())
    return sorted(found)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer or float samples of any depth to 0..255.

    Samples within a usual range keep its meaning: 0..1 and 0..255 (floats), 0..255 and
    0..65535 (integers). Anything else (32-bit integers above 65535, negative samples, floats
    above 255) is stretched from its own minimum to its maximum; never clipped to white.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    values = arr.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    floating = np.issubdtype(arr.dtype, np.floating)
    usual = (1.0, 255.0) if floating else (255.0, 65535.0)
    top = next((t for t in usual if low >= 0.0 and high <= t), None)
    if top is None:
        values, top = values - low, (high - low) or 1.0
    return np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


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


def check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    """ImageError if a ``width`` x ``height`` image is above ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{width}x{height} is {width * height / 1e6:.1f} megapixels, above --max-pixels {max_pixels} "
            "(its full-size outputs need memory in proportion); raise --max-pixels to label it"
        )


def load_rgb(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``path``, apply its EXIF orientation, return (H, W, 3) uint8 RGB; ImageError if unreadable.

    Only regular files are opened (never blocking on a named pipe); an image above
    ``max_pixels`` is refused from its header, before its pixels are decoded.
    """
    try:
        with warnings.catch_warnings(), open_image_file(path) as fh:
            warnings.simplefilter("ignore")
            with Image.open(fh) as img:
                check_pixels(*img.size, max_pixels)
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = pil_to_rgb(upright)
    except UnidentifiedImageError:
        raise ImageError("not a readable image (corrupt, empty or unknown format)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"more than {PILLOW_PIXEL_LIMIT} pixels: too large to decode safely (--max-pixels)") from None
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
        with open_image_file(path) as fh, Image.open(fh) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except Exception as exc:
        raise ImageError(f"{path}: cannot read image ({type(exc).__name__})") from None
    return (h, w) if orientation in _TRANSPOSING else (w, h)
