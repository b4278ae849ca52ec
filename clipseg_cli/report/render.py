"""Pictures of the review page: thumbnails (photo | overlay) and full-size overlays.

Thumbnails are JPEG sprites: the photo and the mask overlay side by side, long side
:data:`THUMB` px each. Overlays use the VOC palette at half opacity with each region's
border drawn at full colour; ignored (255) pixels are hatched. The full-size overlay is an
indexed PNG with transparency at the mask's resolution that the page lays over the
original photo, so no full-size photo is re-encoded.
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from clipseg_cli.data.images import pil_to_rgb
from clipseg_cli.io.masks import IGNORE_LABEL, voc_palette

THUMB = 256  # long side of each thumbnail panel, px
GAP = 4  # px between the panels of a sprite
GAP_COLOUR = (255, 255, 255)
JPEG_QUALITY = 82
FULL_JPEG_QUALITY = 88
FULL_ALPHA = 150  # class colour opacity of the full-size overlay (0..255)
NO_PHOTO = (60, 63, 70)  # panel colour when the photo cannot be read
# Extensions a browser shows in <img>; others (TIFF) get a JPEG copy for the full-size view.
BROWSER_FORMATS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"})


@functools.lru_cache(maxsize=1)
def palette() -> np.ndarray:
    return voc_palette()


def thumb_size(width: int, height: int, long_side: int = THUMB) -> tuple[int, int]:
    """(w, h) with the longer side ``long_side`` and the aspect ratio kept (at least 1 px)."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def hatch_period(width: int, height: int) -> int:
    """Stripe period of the ignored hatch for a picture of this size (about 1/80 of it)."""
    return max(6, round(max(width, height) / 80))


def _stripes(shape: tuple[int, int], period: int) -> np.ndarray:
    """Boolean diagonal stripes, half of each period on: ``(x + y) % period < period // 2``.

    A read-only strided view of one row, so it costs nothing to make."""
    h, w = shape
    row = (np.arange(h + w) % period) < (period // 2)
    return np.lib.stride_tricks.as_strided(row, shape=(h, w), strides=(row.strides[0], row.strides[0]), writeable=False)


def _borders(mask: np.ndarray) -> np.ndarray:
    """Pixels whose right/left/upper/lower neighbour has another label."""
    edge = np.zeros(mask.shape, dtype=bool)
    dx = mask[:, 1:] != mask[:, :-1]
    dy = mask[1:, :] != mask[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    return edge


# Thumbnail overlays are one Image.composite of the photo with an "effect" picture (a palette
# image) through an alpha map: class pixels are tinted at half opacity, their borders drawn at
# full colour, ignored pixels striped white (index 255) and dark (index 254).
_DARK = 254
_TINT, _BORDER, _LIGHT_A, _DARK_A = 128, 255, 191, 113


@functools.lru_cache(maxsize=1)
def _effect_palette() -> list[int]:
    pal = palette().copy()
    pal[IGNORE_LABEL] = (255, 255, 255)
    pal[_DARK] = (0, 0, 0)
    return pal.reshape(-1).tolist()


@functools.lru_cache(maxsize=2)
def _effect_alpha(dark: bool) -> np.ndarray:
    lut = np.full(256, _TINT, dtype=np.uint8)
    lut[0] = 0
    lut[IGNORE_LABEL] = _LIGHT_A
    if dark:
        lut[_DARK] = _DARK_A
    return lut


def overlay_image(photo: Image.Image, mask: np.ndarray, period: int = 8) -> Image.Image:
    """The photo (RGB, the mask's size) with the mask's classes tinted in the VOC palette at
    half opacity, region borders at full colour and ignored pixels hatched (light stripes over
    a darkened photo). One Pillow composite; numpy only makes the index and alpha maps."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    ignored = mask == IGNORE_LABEL
    index = mask
    # Index 254 darkens the gaps between stripes, unless a class of the run uses that value.
    dark = bool(ignored.any()) and not (mask == _DARK).any()
    if ignored.any():
        index = mask.copy()
        gaps = ignored & ~_stripes(mask.shape, period)
        np.copyto(index, np.uint8(_DARK if dark else 0), where=gaps)
    alpha = _effect_alpha(dark)[index]
    cls = (mask != 0) & ~ignored
    np.copyto(alpha, np.uint8(_BORDER), where=cls & _borders(mask))
    effect = Image.frombytes("P", (mask.shape[1], mask.shape[0]), index.tobytes())
    effect.putpalette(_effect_palette())
    return Image.composite(effect.convert("RGB"), photo, Image.fromarray(alpha, mode="L"))


def overlay_rgb(photo: np.ndarray, mask: np.ndarray, period: int = 8) -> np.ndarray:
    """:func:`overlay_image` on arrays: (H, W, 3) uint8 in and out."""
    return np.asarray(overlay_image(Image.fromarray(photo), mask, period))


def overlay_png(mask: np.ndarray) -> bytes:
    """Full-size overlay: an indexed PNG whose palette is the VOC palette with transparency
    (background clear, classes semi-opaque, ignored pixels as white/dark diagonal stripes)."""
    data = np.array(mask, dtype=np.uint8, copy=True)
    alpha = np.full(256, FULL_ALPHA, dtype=np.uint8)
    alpha[0] = 0
    pal = palette().copy()
    ignored = data == IGNORE_LABEL
    if ignored.any():
        h, w = data.shape
        stripes = _stripes(data.shape, hatch_period(w, h))
        # A second stripe colour needs a free palette index: 254 unless the run has 254 classes.
        dark_index = 254 if not (data == 254).any() else 0
        np.copyto(data, np.uint8(dark_index), where=ignored & ~stripes)
        pal[IGNORE_LABEL] = (255, 255, 255)
        alpha[IGNORE_LABEL] = 215
        if dark_index:
            pal[dark_index] = (20, 20, 20)
            alpha[dark_index] = 110
    img = Image.fromarray(data, mode="P")
    img.putpalette(pal.reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=alpha.tobytes(), compress_level=1)
    return buf.getvalue()


_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that turn the picture by 90 degrees


def load_photo(path: str, size: tuple[int, int]) -> Image.Image:
    """The upright photo as an RGB image of ``size`` (w, h). JPEGs are decoded at a reduced
    scale (1/2, 1/4, 1/8) when that still leaves at least ``size``. Raises OSError,
    ValueError or a Pillow error if the file is unreadable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as img:
            if img.format == "JPEG":
                stored = size
                if img.getexif().get(0x0112) in _SWAPS_AXES:
                    stored = (size[1], size[0])
                img.draft("RGB", stored)
            img.load()
            upright = ImageOps.exif_transpose(img)
            if upright.mode not in ("RGB", "L"):
                upright = Image.fromarray(pil_to_rgb(upright))
            if upright.size != size:
                # BOX (area averaging) when shrinking: as sharp as bilinear here, faster.
                smaller = size[0] <= upright.width and size[1] <= upright.height
                method = Image.Resampling.BOX if smaller else Image.Resampling.BILINEAR
                upright = upright.resize(size, method, reducing_gap=2.0)
            if upright.mode != "RGB":
                upright = upright.convert("RGB")
            return upright


def full_photo_jpeg(path: str) -> bytes:
    """A full-size upright JPEG of an image browsers cannot show (TIFF, 16-bit, ...)."""
    from clipseg_cli.data.images import load_rgb

    buf = io.BytesIO()
    Image.fromarray(load_rgb(path)).save(buf, format="JPEG", quality=FULL_JPEG_QUALITY)
    return buf.getvalue()


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (mask.shape[1], mask.shape[0]) == size:
        return mask
    return np.asarray(Image.fromarray(mask, mode="L").resize(size, Image.Resampling.NEAREST))


def sprite(panels: list[Image.Image]) -> Image.Image:
    """Panels of equal height side by side with a GAP px gap."""
    width = sum(p.width for p in panels) + GAP * (len(panels) - 1)
    out = Image.new("RGB", (width, panels[0].height), GAP_COLOUR)
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + GAP
    return out


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def blank_photo(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size, NO_PHOTO)


HEAT_SIDE = 160  # long side of a CAM heat map at most, px (a CAM is smooth: the page scales it up, smoothly)


@functools.lru_cache(maxsize=1)
def _jet_palette() -> list[int]:
    """256 jet colours (blue, cyan, yellow, red), as OpenCV's COLORMAP_JET that --visualize uses."""
    import cv2

    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(-1, 1), cv2.COLORMAP_JET)
    return lut[:, 0, ::-1].reshape(-1).tolist()  # BGR -> RGB


def heat_png(cam: np.ndarray, max_side: int = HEAT_SIDE) -> bytes:
    """A CAM (H, W), values 0..1 (clipped), as an indexed PNG in the jet colours, scaled down
    to about ``max_side`` on its long side; the page lays it over the photo, stretched to its
    size. A CAM is an upsampled 16-px grid, so every n-th pixel loses nothing visible."""
    cam = np.asarray(cam)
    step = max(1, -(-max(cam.shape) // (2 * max_side)))  # keep at least 2x max_side before resizing
    values = np.nan_to_num(np.asarray(cam[::step, ::step], dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    index = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    img = Image.fromarray(index, mode="L")
    h, w = index.shape
    if max(h, w) > max_side:
        img = img.resize(thumb_size(w, h, max_side), Image.Resampling.BILINEAR)
    out = Image.frombytes("P", img.size, img.tobytes())
    out.putpalette(_jet_palette())
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


# The error map against GT, as eval draws it (evaluation.visualize.error_codes): correct pixels
# clear, wrong red, predicted 255 (left out of the score) yellow, GT void grey.
ERROR_RGBA = ((0, 0, 0, 0), (230, 30, 30, 235), (250, 200, 0, 215), (148, 163, 184, 150))


def error_png(codes: np.ndarray) -> bytes:
    """An indexed PNG with transparency of eval's error codes (0 correct, 1 wrong, 2 predicted
    255 left out, 3 GT void), at the mask's size."""
    img = Image.fromarray(np.ascontiguousarray(codes, dtype=np.uint8), mode="P")
    img.putpalette([c for rgba in ERROR_RGBA for c in rgba[:3]])
    buf = io.BytesIO()
    img.save(buf, format="PNG", transparency=bytes(rgba[3] for rgba in ERROR_RGBA), compress_level=1)
    return buf.getvalue()
