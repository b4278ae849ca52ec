"""One image's work for the report, run in a process pool: read the mask (and its CAMs and
GT), compute its statistics, render its thumbnails (and the full-size overlays the page
cannot draw itself from the mask file: GT maps, masks not in the VOC palette).

A task never raises for bad input: it returns ``{"stem", "error"}`` and the builder turns
the first error into one line (exit 2). Only numpy and Pillow are imported here, so pool
workers start quickly.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import posixpath
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipseg_cli.errors import ConfigError, ImageError
from clipseg_cli.evaluation.confusion import LabelRangeError
from clipseg_cli.evaluation.readers import read_label_map
from clipseg_cli.evaluation.visualize import error_codes
from clipseg_cli.io.atomic import write_bytes
from clipseg_cli.report import render
from clipseg_cli.report.records import LabelValueError, gt_stats, mask_stats

THUMBS = "thumbs"  # photo | overlay sprites
THUMBS_GT = "thumbs-gt"  # photo with the GT overlay, with --gt
OVERLAYS = "overlays"  # full-size transparent overlays of masks not in the VOC palette
OVERLAYS_GT = "overlays-gt"  # ... of the GT label maps
PHOTOS = "photos"  # full-size JPEGs of photos in formats browsers do not show
ERRORS = "overlays-err"  # with --gt: the error map against the GT (as eval draws it)
HEAT = "heat"  # CAM heat maps from cams/*.npz: heat/<stem>.<kind><label>.png
HEAT_KINDS = ("cam", "refined")  # the .npz arrays drawn: Grad-CAM, and after CAA

PHOTO_ERRORS = (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Task:
    stem: str
    mask: str
    n_labels: int
    report_dir: str
    stats: bool = False  # compute the mask statistics
    pictures: bool = False  # render the thumbnail (and overlay)
    gt_stats: bool = False  # score against the GT
    gt_pictures: bool = False  # render the GT thumbnail and overlay
    cams: str | None = None  # the image's CAMs .npz, if it exists
    gt: str | None = None  # its GT label map, if any
    photo: str | None = None  # its photo, if it exists
    heat: bool = False  # render the CAM heat maps of the cams file


def out_path(report_dir: str, folder: str, stem: str, ext: str) -> Path:
    return Path(report_dir) / folder / f"{stem}{ext}"


def heat_name(kind: str, label: int) -> str:
    """The suffix of one heat map file: ``heat/<stem>.<kind><label>.png``."""
    return f".{kind}{label}.png"


def photo_mode(photo: str | None) -> str | None:
    """How the full-size view shows the photo: the file itself, a JPEG copy, or not at all."""
    if photo is None:
        return None
    return "orig" if posixpath.splitext(photo)[1].lower() in render.BROWSER_FORMATS else "copy"


def read_confidence(path: str) -> np.ndarray | None:
    """The ``confidence`` map of a cams .npz (None when the CRF did not run). Reads that one
    member, without np.load's per-file overhead (half the time for a small map)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if "confidence.npy" not in archive.namelist():
                return None
            data = archive.read("confidence.npy")
        return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ConfigError(f"cannot read CAMs {path}: {exc}") from None


@functools.lru_cache(maxsize=1)
def _voc_palette_list() -> list[int]:
    return render.palette().reshape(-1).tolist()


def read_mask(path: str, n_labels: int) -> tuple[np.ndarray, bool]:
    """The label map and whether its PNG is drawn in the VOC palette (then the page shows the
    mask file itself as the full-size overlay; otherwise an overlay PNG is rendered)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16", "1"):
                raise ValueError(f"a label map must be a palette or greyscale PNG, not {img.mode}")
            voc = False
            if img.mode == "P" and img.format == "PNG":
                pal = img.getpalette() or []
                want = _voc_palette_list()
                k = 3 * min(n_labels, 255)
                voc = pal[:k] == want[:k] and pal[765:768] == want[765:768] and "transparency" not in img.info
            values = np.asarray(img)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError) as exc:
        raise ConfigError(f"cannot read label map {path}: {exc}") from None
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ConfigError(f"cannot read label map {path}: label values must be 0..255")
        values = values.astype(np.uint8)
    return values, voc


def render_heat(task: Task) -> dict[str, Any]:
    """The CAM heat maps of one image's cams file, one PNG per label and kind (Grad-CAM,
    after CAA); returns ``{"labels": [mask values], "kinds": [...]}`` (empty lists when the
    file has no CAM arrays, e.g. an older run that saved the confidence only)."""
    assert task.cams is not None
    try:
        with np.load(task.cams, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("labels", *HEAT_KINDS) if k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ConfigError(f"cannot read CAMs {task.cams}: {exc}") from None
    labels = [1 + int(v) for v in np.asarray(arrays.get("labels", []), dtype=np.int64).reshape(-1)]
    kinds = []
    for kind in HEAT_KINDS:
        maps = arrays.get(kind)
        if maps is None or maps.ndim != 3 or maps.shape[0] != len(labels):
            continue
        kinds.append(kind)
        for label, cam in zip(labels, maps):
            write_bytes(out_path(task.report_dir, HEAT, task.stem, heat_name(kind, label)), render.heat_png(cam))
    return {"labels": labels if kinds else [], "kinds": kinds}


def _thumb_photo(task: Task, size: tuple[int, int]) -> tuple[Image.Image, str | None, str | None]:
    """The photo at thumbnail size, how the full-size view shows it, and a warning."""
    mode = photo_mode(task.photo)
    if task.photo is not None:
        try:
            return render.load_photo(task.photo, size), mode, None
        except PHOTO_ERRORS as exc:
            return render.blank_photo(size), None, f"cannot read photo {task.photo}: {exc}"
    return render.blank_photo(size), None, None


def render_pictures(task: Task, mask: np.ndarray, voc: bool, gt: np.ndarray | None, photo: Image.Image, mode: str | None) -> dict[str, Any]:
    """Write the thumbnail (and the overlay where the page cannot draw the mask itself) of
    one image; returns how the full-size view shows the photo and the overlay."""
    small = render.resize_mask(mask, photo.size)
    sprite = render.sprite([photo, render.overlay_image(photo, small)])
    write_bytes(out_path(task.report_dir, THUMBS, task.stem, ".jpg"), render.encode_jpeg(sprite))
    overlay = out_path(task.report_dir, OVERLAYS, task.stem, ".png")
    if voc:  # the page draws the mask file itself (an SVG filter keys out background, hatches 255)
        with contextlib.suppress(FileNotFoundError):
            overlay.unlink()
    else:
        write_bytes(overlay, render.overlay_png(mask))
    warning = None
    if mode == "copy" and task.photo is not None:
        try:
            write_bytes(out_path(task.report_dir, PHOTOS, task.stem, ".jpg"), render.full_photo_jpeg(task.photo))
        except (ImageError, *PHOTO_ERRORS) as exc:  # show the thumbnail only
            warning = f"cannot convert photo {task.photo}: {exc}"
            mode = None
    return {"photo": mode, "overlay": "mask" if voc else "png", "warning": warning}


def render_gt_pictures(task: Task, gt: np.ndarray, mask: np.ndarray, photo: Image.Image) -> None:
    """The GT thumbnail (photo with the GT overlay), the full-size GT overlay and the error
    map of the mask against the GT (eval's colours)."""
    if gt.shape != mask.shape:
        raise ConfigError(
            f"{task.stem}: GT {gt.shape[1]}x{gt.shape[0]} and mask {mask.shape[1]}x{mask.shape[0]} differ in size ({task.gt})"
        )
    gt_thumb = render.overlay_image(photo, render.resize_mask(gt, photo.size))
    write_bytes(out_path(task.report_dir, THUMBS_GT, task.stem, ".jpg"), render.encode_jpeg(gt_thumb))
    write_bytes(out_path(task.report_dir, OVERLAYS_GT, task.stem, ".png"), render.overlay_png(gt))
    write_bytes(out_path(task.report_dir, ERRORS, task.stem, ".png"), render.error_png(error_codes(gt, mask)))


def run_task(task: Task) -> dict[str, Any]:
    """Statistics and/or pictures of one image; bad input comes back as ``error``."""
    result: dict[str, Any] = {"stem": task.stem}
    try:
        mask, voc = read_mask(task.mask, task.n_labels)
        gt = None
        if task.gt is not None and (task.gt_stats or task.gt_pictures):
            gt = read_label_map(Path(task.gt))
        if task.stats:
            confidence = read_confidence(task.cams) if task.cams is not None else None
            try:
                result["stats"] = mask_stats(mask, task.n_labels, confidence)
            except LabelValueError as exc:
                raise ConfigError(f"{task.mask}: {exc}") from None
        if task.gt_stats and gt is not None:
            try:
                result["gt_stats"] = gt_stats(mask, gt, task.n_labels)
            except LabelRangeError as exc:
                where = task.gt if exc.which == "GT" else task.mask
                raise ConfigError(f"{where}: {exc} (the run has {task.n_labels - 1} classes)") from None
            except ValueError as exc:
                raise ConfigError(f"{task.stem}: {exc} ({task.gt} vs {task.mask})") from None
        if task.pictures or (task.gt_pictures and gt is not None):
            photo, mode, warning = _thumb_photo(task, render.thumb_size(mask.shape[1], mask.shape[0]))
            if task.pictures:
                result["pictures"] = render_pictures(task, mask, voc, gt, photo, mode)
                result["pictures"]["warning"] = warning or result["pictures"]["warning"]
            if task.gt_pictures and gt is not None:
                render_gt_pictures(task, gt, mask, photo)
                result["gt_pictures"] = True
        if task.heat and task.cams is not None:
            result["heat"] = render_heat(task)
    except ConfigError as exc:
        result["error"] = str(exc)
    except OSError as exc:  # writing a picture failed (disk full, permissions)
        result["error"] = f"cannot write the report for {task.stem}: {exc}"
    return result


def _exit_with(owner: int) -> None:
    """Stop this worker when the process that owns the pool is gone (killed without the
    chance to shut the pool down), instead of waiting forever for tasks."""
    while True:
        time.sleep(1.0)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # alive, another user's process
            pass


def init_worker(owner: int | None = None) -> None:
    """Pool initializer: watch the pool's owner (see :func:`_exit_with`), and keep freed
    memory in glibc's heap instead of returning it to the system after every picture (the
    page faults of re-mapping it cost about a quarter of the CPU time of an image; harmless
    where there is no glibc)."""
    if owner is not None:
        threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_trim_threshold, 256 << 20)
        libc.mallopt(m_mmap_threshold, 32 << 20)
    except (OSError, AttributeError):
        pass


def run_chunk(tasks: list[Task]) -> list[dict[str, Any]]:
    return [run_task(t) for t in tasks]
