"""Pictures for eval: GT | prediction | errors per image, and charts (matplotlib, Agg canvas)."""

from __future__ import annotations

import functools
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from clipseg_cli.io.atomic import atomic_path, write_bytes
from clipseg_cli.io.legend import GAP, TEXT, WHITE, legend_image
from clipseg_cli.io.legend import font as legend_font
from clipseg_cli.io.masks import IGNORE_LABEL, voc_palette

HEADER = 22
CORRECT = (45, 45, 45)
WRONG = (230, 30, 30)
LEFT_OUT = (250, 200, 0)
VOID = tuple(int(v) for v in voc_palette()[IGNORE_LABEL])


@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    return voc_palette()


def _indexed(index_map: np.ndarray, palette: np.ndarray) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(index_map, dtype=np.uint8), mode="P")
    img.putpalette(palette.reshape(-1).tolist())
    return img


ERROR_COLORS = np.array([CORRECT, WRONG, LEFT_OUT, VOID], dtype=np.uint8)


def error_codes(gt: np.ndarray, pred: np.ndarray, pred_ignore: str = "exclude") -> np.ndarray:
    """(H, W) uint8: 0 correct, 1 wrong, 2 predicted 255 left out, 3 GT void."""
    if pred_ignore == "background":
        pred = np.where(pred == IGNORE_LABEL, 0, pred)
    codes = (pred != gt).view(np.uint8).copy()
    codes[pred == IGNORE_LABEL] = 2
    codes[gt == IGNORE_LABEL] = 3
    return codes


def side_by_side(
    gt: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    pred_ignore: str = "exclude",
    title: str = "",
) -> Image.Image:
    """One picture: GT | prediction | errors, titles on top, a colour key of the labels below."""
    h, w = gt.shape
    panels = [
        _indexed(gt, _palette()),
        _indexed(pred, _palette()),
        _indexed(error_codes(gt, pred, pred_ignore), ERROR_COLORS),
    ]
    width = 3 * w + 2 * GAP
    font = legend_font()
    names = ["background", *class_names]
    palette = _palette()
    counts = np.bincount(gt.ravel(), minlength=256) + np.bincount(pred.ravel(), minlength=256)
    shown = np.flatnonzero(counts).tolist()
    entries = [(names[v] if v < len(names) else str(v), tuple(int(c) for c in palette[v])) for v in shown if v != IGNORE_LABEL]
    entries += [("void / ignored", VOID), ("correct", CORRECT), ("wrong", WRONG)]
    if pred_ignore == "exclude" and (pred == IGNORE_LABEL).any():
        entries.append(("predicted 255, left out", LEFT_OUT))
    legend = legend_image(entries, width)
    canvas = Image.new("RGB", (width, HEADER + h + legend.height), WHITE)
    for i, panel in enumerate(panels):
        canvas.paste(panel.convert("RGB"), (i * (w + GAP), HEADER))
    draw = ImageDraw.Draw(canvas)
    heads = ["GT", "prediction", "errors"]
    if title:
        heads[0] = f"GT  {title}"
    for i, text in enumerate(heads):
        draw.text((i * (w + GAP) + 4, 4), text, fill=TEXT, font=font)
    canvas.paste(legend, (0, HEADER + h))
    return canvas


def save_side_by_side(dest: str | os.PathLike[str], *args, **kwargs) -> None:
    """Write :func:`side_by_side` as a PNG, atomically."""
    buf = io.BytesIO()
    side_by_side(*args, **kwargs).save(buf, format="PNG", compress_level=3)
    write_bytes(dest, buf.getvalue())


def _save_figure(fig, dest: str | os.PathLike[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def iou_bar_chart(
    dest: str | os.PathLike[str],
    names: Sequence[str],
    iou: Sequence[float | None],
    in_gt: Sequence[bool],
    miou: float | None,
    title: str = "per-class IoU",
) -> None:
    """Bar chart of IoU for the classes present in the GT (names include background)."""
    from matplotlib.figure import Figure

    keep = [i for i, p in enumerate(in_gt) if p]
    labels = [names[i] for i in keep]
    values = [100.0 * (iou[i] or 0.0) for i in keep]
    colors = _palette()[np.asarray(keep, dtype=np.int64) % 256] / 255.0 if keep else []
    fig = Figure(figsize=(max(6.0, 0.38 * len(keep) + 1.5), 4.5))
    ax = fig.add_subplot()
    ax.bar(range(len(keep)), values, color=colors, edgecolor="black", linewidth=0.5)
    ax.set_xticks(range(len(keep)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    if miou is not None:
        ax.axhline(100.0 * miou, color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"{title}: mIoU {100.0 * miou:.1f}%")
    else:
        ax.set_title(title)
    fig.tight_layout()
    _save_figure(fig, dest)


def sweep_chart(dest: str | os.PathLike[str], thresholds: Sequence[float], mious: Sequence[float | None], best: float) -> None:
    """mIoU against the CAM background threshold, the best one marked."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot()
    ax.plot(list(thresholds), [100.0 * (m or 0.0) for m in mious], marker="o", markersize=3)
    ax.axvline(best, color="tab:red", linestyle="--", linewidth=1)
    ax.set_xlabel("background threshold t")
    ax.set_ylabel("mIoU (%)")
    ax.set_title(f"CAM threshold sweep: best t = {best:.2f}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, dest)
