"""`wsss-label reproduce voc|coco`: the CLIP-ES paper's pseudo-mask table, with our figures beside it.

A dataset folder in a fixed layout (:func:`voc_dataset`, :func:`coco_dataset`) gives the images,
their image-level labels, the split's image list and the ground truth. After the main job has
labelled the split into OUT (CAMs kept), :func:`evaluate_run` scores the raw CAMs and the
CAA-refined CAMs (background threshold swept, best kept, as ``wsss-label eval --cams``) and
the masks (as ``wsss-label eval``), and :func:`build_table` puts them beside the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from clipseg_cli.data.image_list import image_stem, read_image_list
from clipseg_cli.errors import ConfigError

Tick = Callable[[], None]
SHOW_MISSING = 5

# CLIP-ES (Lin et al., CVPR 2023), PASCAL VOC 2012 train set, single-scale inference: Table 2
# ("Initial", "Initial + CAA", "Initial + CAA + dCRF"), mIoU. Seconds: Table 3, 0.4 h inference +
# 0.2 h dense CRF for the 10,582 train_aug images on one TITAN RTX (CRF in 20 processes).
PAPER: dict[str, dict[str, Any]] = {
    "voc": {
        "cam": 0.586,
        "refined": 0.708,
        "masks": 0.750,
        "seconds_per_image": round(0.6 * 3600 / 10582, 3),
        "source": "CLIP-ES (CVPR 2023): mIoU from Table 2 (VOC 2012 train, single scale); seconds per image "
        "from Table 3 (0.6 h for the 10,582 train_aug images on one TITAN RTX)",
    },
    "coco": {
        "cam": None,
        "refined": None,
        "masks": None,
        "seconds_per_image": None,
        "source": "CLIP-ES (CVPR 2023) gives no COCO 2014 train figures for CAMs, CAA or pseudo masks in its "
        "text (its COCO result, 45.4% val mIoU, is after training DeepLab on the masks)",
    },
}

ROWS = (("cam", "CAM"), ("refined", "+CAA"), ("masks", "+CRF (pseudo masks)"))


@dataclass(frozen=True)
class Dataset:
    """Where a dataset's parts are; ``annotations`` (VOC XML) or labels from ``gt`` (COCO)."""

    name: str
    split: str
    classes: str
    images: Path
    gt: Path
    annotations: Path | None
    image_list: Path | None


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise ConfigError(f"{what} not found: {path}")
    return path


def voc_dataset(root: Path, split: str = "train", gt: Path | None = None) -> Dataset:
    """VOCdevkit/VOC2012: JPEGImages/, Annotations/ (XML), SegmentationClass/ (label PNGs, or
    ``gt``) and ImageSets/Segmentation/<split>.txt."""
    _need(root, "VOC folder (--root)")
    return Dataset(
        name="voc",
        split=split,
        classes="voc",
        images=_need(root / "JPEGImages", "VOC images"),
        gt=_need(gt, "ground truth (--gt)") if gt is not None else _need(root / "SegmentationClass", "VOC ground truth"),
        annotations=_need(root / "Annotations", "VOC XML annotations"),
        image_list=_need(root / "ImageSets" / "Segmentation" / f"{split}.txt", f"VOC split list for --split {split}"),
    )


def coco_dataset(root: Path, split: str = "train", gt: Path | None = None) -> Dataset:
    """COCO 2014: images in JPEGImages/<split>2014/ (or <split>2014/), label PNGs in
    SegmentationClass/<split>2014/ (or SegmentationClass/, or ``gt``), optional list
    ImageSets/<split>.txt (first field of each line; default: every label PNG)."""
    _need(root, "COCO folder (--root)")
    folder = f"{split}2014"
    images = next((p for p in (root / "JPEGImages" / folder, root / folder) if p.is_dir()), None)
    if images is None:
        raise ConfigError(f"COCO images not found: {root / 'JPEGImages' / folder} (or {root / folder})")
    if gt is None:
        gt = next((p for p in (root / "SegmentationClass" / folder, root / "SegmentationClass") if p.is_dir()), None)
        if gt is None:
            raise ConfigError(
                f"COCO label PNGs not found: {root / 'SegmentationClass' / folder} (or {root / 'SegmentationClass'}); "
                "COCO ships instance JSON: convert it to label PNGs first (docs/reproduce.md)"
            )
    listed = root / "ImageSets" / f"{split}.txt"
    return Dataset("coco", split, "coco", images, _need(gt, "COCO ground truth (--gt)"), None,
                   listed if listed.is_file() else None)  # fmt: skip


def split_stems(dataset: Dataset) -> list[str]:
    """The split's images (relative paths without extension): its list, else every GT PNG."""
    if dataset.image_list is not None:
        return read_image_list(dataset.image_list)
    from clipseg_cli.evaluation.matching import index_folder

    stems = sorted(index_folder(dataset.gt, ".png"))
    if not stems:
        raise ConfigError(f"{dataset.gt} holds no .png label maps")
    return stems


def labels_from_gt(gt: Path, stems: Sequence[str], class_names: Sequence[str], on_image: Tick | None = None) -> dict[str, list[str]]:
    """Image-level labels from label PNGs: the classes present (value ``1 + c``), in class order."""
    import numpy as np

    from clipseg_cli.evaluation.readers import read_label_map
    from clipseg_cli.io.masks import IGNORE_LABEL

    labels: dict[str, list[str]] = {}
    for stem in stems:
        path = gt / f"{stem}.png"
        if path.is_file():
            values = np.flatnonzero(np.bincount(read_label_map(path).ravel(), minlength=256))
            bad = [int(v) for v in values if v > len(class_names) and v != IGNORE_LABEL]
            if bad:
                raise ConfigError(f"{path}: label values {bad[:5]} are not classes of --classes (1..{len(class_names)}) nor 255")
            labels[stem] = [class_names[v - 1] for v in values if 0 < v <= len(class_names)]
        if on_image is not None:
            on_image()
    return labels


@dataclass
class Scored:
    """The images of the split that are scored, and those that are not: without ground truth,
    without labels (skipped by the run, as the paper's lists leave out such images), or with no
    mask for another reason (failed)."""

    stems: list[str]
    no_gt: list[str]
    no_labels: list[str]
    no_mask: list[str]


def scoreable(out: Path, gt: Path, stems: Sequence[str], run: dict[str, Any]) -> Scored:
    """Split images with a GT PNG, a mask and CAMs in OUT; ``run`` is OUT's run.json."""
    skipped = {image_stem(str(e.get("image"))) for e in run.get("skipped") or [] if isinstance(e, dict)}
    result = Scored([], [], [], [])
    for stem in stems:
        if not (gt / f"{stem}.png").is_file():
            result.no_gt.append(stem)
        elif (out / "masks" / f"{stem}.png").is_file() and (out / "cams" / f"{stem}.npz").is_file():
            result.stems.append(stem)
        else:
            (result.no_labels if stem in skipped else result.no_mask).append(stem)
    return result


def evaluate_run(
    out: Path, gt: Path, stems: Sequence[str], class_names: Sequence[str], on_image: Tick | None = None
) -> dict[str, dict[str, Any]]:
    """Reports of ``cam`` and ``refined`` (threshold sweeps) and ``masks`` (255 left out) over ``stems``."""
    from clipseg_cli.evaluation.matching import Pair
    from clipseg_cli.evaluation.runner import evaluate_cams, evaluate_masks

    cams = [Pair(s, out / "cams" / f"{s}.npz", gt / f"{s}.png") for s in stems]
    masks = [Pair(s, out / "masks" / f"{s}.png", gt / f"{s}.png") for s in stems]
    return {
        "cam": evaluate_cams(cams, class_names, "cam", on_image=on_image),
        "refined": evaluate_cams(cams, class_names, "refined", on_image=on_image),
        "masks": evaluate_masks(masks, class_names, "exclude", on_image=on_image),
    }


def _mean(values: Sequence[float]) -> float | None:
    return round(math.fsum(values) / len(values), 4) if values else None


def seconds_per_image(run: dict[str, Any], stems: Sequence[str]) -> dict[str, Any]:
    """Mean recorded seconds per image (model: CAM + CAA, CRF, total) over the scored images."""
    wanted = set(stems)
    times = [
        e["seconds"] for e in run.get("images") or []
        if isinstance(e, dict) and isinstance(e.get("seconds"), dict) and image_stem(str(e.get("image"))) in wanted
    ]  # fmt: skip
    means: dict[str, Any] = {key: _mean([float(t[key]) for t in times if key in t]) for key in ("cam", "crf", "total")}
    means["images"] = len(times)
    return means


def build_table(dataset: Dataset, reports: dict[str, dict[str, Any]], scored: Scored, n_listed: int, run: dict[str, Any]) -> dict[str, Any]:
    """The JSON table: per step our mIoU (and best threshold) beside the paper's, seconds per image."""
    paper = PAPER[dataset.name]
    settings = run.get("settings") or {}
    rows = []
    for key, step in ROWS:
        report = reports[key]
        rows.append({
            "step": step,
            "key": key,
            "miou": report["miou"],
            "paper": paper[key],
            "best_threshold": report.get("best_threshold"),
        })  # fmt: skip
    return {
        "dataset": dataset.name,
        "split": dataset.split,
        "images": {
            "listed": n_listed,
            "scored": len(scored.stems),
            "no_ground_truth": scored.no_gt,
            "no_labels": scored.no_labels,
            "no_mask": scored.no_mask,
        },
        "rows": rows,
        "mu": settings.get("mu"),
        "ignored_fraction": reports["masks"]["ignored_fraction"],
        "seconds_per_image": {"ours": seconds_per_image(run, scored.stems), "paper": paper["seconds_per_image"]},
        "device": settings.get("device"),
        "paper_source": paper["source"],
    }


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100.0 * value:.1f}"


def seconds_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def table_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown, with the notes that say what each figure is."""
    images = table["images"]
    lines = [
        f"# CLIP-ES on {table['dataset'].upper()} {table['split']}: ours beside the paper",
        "",
        "| step | ours mIoU % | paper mIoU % | background threshold |",
        "| --- | ---: | ---: | ---: |",
    ]
    for row in table["rows"]:
        t = row["best_threshold"]
        lines.append(f"| {row['step']} | {percent(row['miou'])} | {percent(row['paper'])} | {'—' if t is None else f'{t:.2f}'} |")
    ours = table["seconds_per_image"]["ours"]
    lines += [
        f"| seconds per image | {seconds_text(ours['total'])} (CAM + CAA {seconds_text(ours['cam'])}, CRF {seconds_text(ours['crf'])}) "
        f"| {seconds_text(table['seconds_per_image']['paper'])} | |",
        "",
        f"- Images: {images['scored']} of the {images['listed']} listed were scored" + _missing_note(images) + ".",
        "- CAM and +CAA: the best background threshold of 0.05..0.95 (as `wsss-label eval --cams`).",
        f"- +CRF: the masks, made with mu = {table['mu']}"
        + (
            ": the CRF's label at every pixel, as the paper scores it."
            if not table["mu"]
            else f"; their 255 pixels ({percent(table['ignored_fraction'])}% of the valid ground truth) are left out, "
            "which the paper's figure does not do."
        ),
        f"- Seconds: mean per image recorded in run.json (device: {table['device']}); the paper's on its GPU.",
        f"- Paper: {table['paper_source']}.",
        "",
    ]
    return "\n".join(lines)


def _missing_note(images: dict[str, Any]) -> str:
    parts = []
    for key, what in (("no_ground_truth", "no ground truth"), ("no_labels", "no labels"), ("no_mask", "no mask (failed)")):
        names = images[key]
        if names:
            shown = ", ".join(names[:SHOW_MISSING]) + (", ..." if len(names) > SHOW_MISSING else "")
            parts.append(f"{len(names)} with {what}: {shown}")
    return f" ({'; '.join(parts)})" if parts else ""
