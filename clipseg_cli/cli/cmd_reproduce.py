"""`wsss-label reproduce voc|coco --root ROOT --out OUT`: the CLIP-ES paper's table, ours beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer
from rich.table import Table

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.cmd_label import CrfBackend
from clipseg_cli.cli.console import console, handle_errors
from clipseg_cli.cli.progress import Progress
from clipseg_cli.errors import EXIT_OK, EXIT_SOME_FAILED
from clipseg_cli.io.lock import holds_output

DatasetName = Literal["voc", "coco"]
TABLE_MD = "reproduce.md"
TABLE_JSON = "reproduce.json"


def reproduce(
    dataset: DatasetName = typer.Argument(..., help="voc: PASCAL VOC 2012 (VOCdevkit/VOC2012); coco: COCO 2014 with label PNGs."),
    root: Path = typer.Option(..., "--root", metavar="DIR", help="The dataset folder, e.g. VOCdevkit/VOC2012 (layout: docs/reproduce.md)."),
    out: Path = cv.out_option("Output folder: the run (masks/, cams/, run.json) and reproduce.md / reproduce.json."),
    split: str = typer.Option("train", "--split", help="The split: VOC ImageSets/Segmentation/<split>.txt; COCO <split>2014."),
    weights: Optional[Path] = cv.weights_option(),
    device: str = cv.device_option(),
    gt: Optional[Path] = typer.Option(
        None,
        "--gt",
        metavar="DIR",
        help="Label PNGs to score against (default: the dataset's, e.g. VOC's SegmentationClass; see docs/reproduce.md).",
    ),
    mu: float = typer.Option(
        0.0,
        "--mu",
        help="CRF confidence below which a mask pixel becomes 255. 0: the CRF's label everywhere, as the paper scores its +CRF figure; "
        "0.95: the training pseudo masks (their 255 pixels are then left out of the +CRF figure).",
    ),
    workers: Optional[int] = typer.Option(None, "--workers", help="As for `wsss-label label` (default: one per CPU core, at most 8)."),
    crf_backend: CrfBackend = typer.Option(
        "auto",
        "--crf-backend",
        help="As for `wsss-label label`: pydensecrf (the paper's), or torch; auto: torch when the model runs on CUDA.",
    ),
) -> None:
    """Label a dataset split with CLIP-ES and print the paper's table beside ours: CAM, +CAA, +CRF mIoU and seconds per image."""
    raise typer.Exit(_run(dataset, root, out, split, weights, device, gt, mu, workers, crf_backend))


@handle_errors
@holds_output()
def _run(
    dataset_name: str, root: Path, out: Path, split: str, weights: Optional[Path], device: str,
    gt: Optional[Path], mu: float, workers: Optional[int], crf_backend: str = "auto",
) -> int:  # fmt: skip
    from clipseg_cli.cam.pipeline import DEFAULT_TEMPLATE
    from clipseg_cli.cli import cmd_label
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.errors import ConfigError
    from clipseg_cli.io.atomic import write_bytes, write_json
    from clipseg_cli.reproduce import (
        build_table,
        coco_dataset,
        evaluate_run,
        labels_from_gt,
        scoreable,
        split_stems,
        table_markdown,
        voc_dataset,
    )  # fmt: skip
    from clipseg_cli.run_settings import read_record

    dataset = voc_dataset(root, split, gt) if dataset_name == "voc" else coco_dataset(root, split, gt)
    class_names = load_class_set(dataset.classes).classes
    stems = split_stems(dataset)
    console.print(f"reproduce {dataset.name} {split}: {len(stems)} images listed, ground truth {dataset.gt}")

    labels_file = None
    if dataset.annotations is None:  # COCO: image-level labels from the label PNGs, kept in OUT
        labels_file = out / f"labels.{split}.json"
        if not _covers(labels_file, dataset.gt, stems):
            with Progress() as progress:
                task = progress.add("labels from the ground truth", total=len(stems))
                labels = labels_from_gt(dataset.gt, stems, class_names, on_image=lambda: task.advance())
            if not labels:
                raise ConfigError(f"{dataset.gt}: no label PNG for any listed image")
            write_json(labels_file, labels)
    code = cmd_label._run(
        images=dataset.images, labels=labels_file, annotations=dataset.annotations, out=out, classes=dataset.classes,
        weights=weights, template=[DEFAULT_TEMPLATE], background=None, lam=None, mu=mu, synonyms="sentence",
        crf=True, save_cams=True, visualize=False, device=device, max_side=1024, overwrite=False, workers=workers,
        crf_backend=crf_backend, image_list=dataset.image_list,
    )  # fmt: skip
    run = read_record(out / "run.json") or {}
    scored = scoreable(out, dataset.gt, stems, run)
    if not scored.stems:
        raise ConfigError(f"no image of the split has both ground truth and a mask in {out}")
    with Progress() as progress:
        task = progress.add("scoring CAM, +CAA, +CRF", total=3 * len(scored.stems))
        reports = evaluate_run(out, dataset.gt, scored.stems, class_names, on_image=lambda: task.advance())
    table = build_table(dataset, reports, scored, len(stems), run)
    write_json(out / TABLE_JSON, table)
    write_bytes(out / TABLE_MD, table_markdown(table).encode("utf-8"))
    _print_table(table)
    console.print(f"table: {out / TABLE_MD}, {out / TABLE_JSON}")
    missing = len(stems) - len(scored.stems)
    if missing:
        console.print(f"{missing} of {len(stems)} listed images were not scored (see {out / TABLE_MD})")
    return EXIT_SOME_FAILED if code == EXIT_SOME_FAILED or scored.no_mask else EXIT_OK


def _covers(path: Path, gt: Path, stems: list[str]) -> bool:
    """An earlier labels file names exactly the split's images with ground truth (a rerun does not
    read the ground truth again)."""
    from clipseg_cli.run_settings import read_record

    record = read_record(path)
    return bool(record) and set(record) == {s for s in stems if (gt / f"{s}.png").is_file()}


def _print_table(table: dict) -> None:
    from clipseg_cli.reproduce import percent, seconds_text

    view = Table(title=f"CLIP-ES on {table['dataset'].upper()} {table['split']} ({table['images']['scored']} images)", title_justify="left")
    for column in ("step", "ours mIoU %", "paper mIoU %", "bg threshold"):
        view.add_column(column, justify="left" if column == "step" else "right")
    for row in table["rows"]:
        t = row["best_threshold"]
        view.add_row(row["step"], percent(row["miou"]), percent(row["paper"]), "—" if t is None else f"{t:.2f}")
    seconds = table["seconds_per_image"]
    view.add_row("seconds per image", seconds_text(seconds["ours"]["total"]), seconds_text(seconds["paper"]), "")
    console.print(view)


def register(app: typer.Typer) -> None:
    cv.command(app, "reproduce", reproduce)
