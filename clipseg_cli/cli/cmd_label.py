"""`wsss-label [label] IMAGES --labels LABELS --out OUT`: CLIP-ES pseudo masks."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clipseg_cli.cli.console import console, handle_errors, progress_bar
from clipseg_cli.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError


def _check_settings(templates: list[str], lam: float, mu: float, max_side: int, synonyms: str) -> None:
    from clipseg_cli.cam.pipeline import SYNONYM_MODES

    for template in templates:
        if template.count("{}") != 1:
            raise ConfigError(f"--template must contain '{{}}' exactly once where the class name goes: {template!r}")
    if not 0.0 <= lam < 1.0:
        raise ConfigError(f"--lambda must be in [0, 1), got {lam}")
    if not 0.0 <= mu <= 1.0:
        raise ConfigError(f"--mu must be in [0, 1], got {mu}")
    if max_side and max_side < 16:
        raise ConfigError(f"--max-side must be 0 (no limit) or at least 16, got {max_side}")
    if synonyms not in SYNONYM_MODES:
        raise ConfigError(f"--synonyms must be one of {', '.join(SYNONYM_MODES)}, got {synonyms!r}")


def label(
    images: Path = typer.Argument(..., help="Folder of images, searched recursively (.jpg .jpeg .png .bmp .webp .tif .tiff)."),
    labels: Optional[Path] = typer.Option(
        None, "--labels", "-l", help='Image-level labels: JSON {"rel/path.jpg": ["cat", ...]} or lines "rel/path.jpg cat person".'
    ),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations", help="Folder of VOC XML files; labels = distinct object names in order (instead of --labels)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (masks/, cams/, vis/, run.json)."),
    classes: str = typer.Option("voc", "--classes", "-c", help='voc | coco | FILE (one class per line, "name: synonym, ...") | "a,b,c".'),
    weights: Optional[Path] = typer.Option(
        None, "--weights", help="CLIP checkpoint (else $WSSS_LABEL_WEIGHTS, else the cached ViT-B-16.pt, downloaded if absent)."
    ),
    template: list[str] = typer.Option(
        ["a clean origami {}."], "--template", "-t", help="Prompt template with {}; repeat to average several."
    ),
    background: Optional[str] = typer.Option(None, "--background", help="voc | coco | none | FILE; default: the class set's."),
    lam: Optional[float] = typer.Option(None, "--lambda", help="CAA box threshold (default 0.4 voc/custom, 0.7 coco)."),
    mu: float = typer.Option(0.95, "--mu", help="CRF confidence below which a pixel becomes 255 (ignored)."),
    synonyms: str = typer.Option("sentence", "--synonyms", help="Synonym fusion: sentence | feature | cam."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Dense CRF (else argmax of [1 - max refined, refined], no 255)."),
    save_cams: bool = typer.Option(False, "--save-cams", help="Also write cams/<rel>.npz (labels, cam, refined, confidence)."),
    visualize: bool = typer.Option(False, "--visualize", help="Also write vis/<rel>.png: image | mask overlay | CAM per label."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    max_side: int = typer.Option(1024, "--max-side", help="Scale larger images down to this long side first (0: never)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose mask exists (default: skip them, i.e. resume)."),
) -> None:
    """Make CLIP-ES pseudo masks for a folder of images with image-level labels."""
    raise typer.Exit(
        _run(
            images, labels, annotations, out, classes, weights, template, background, lam, mu,
            synonyms, crf, save_cams, visualize, device, max_side, overwrite,
        )
    )


@handle_errors
def _run(
    images: Path, labels: Optional[Path], annotations: Optional[Path], out: Path, classes: str,
    weights: Optional[Path], template: list[str], background: Optional[str], lam: Optional[float], mu: float,
    synonyms: str, crf: bool, save_cams: bool, visualize: bool, device: str, max_side: int, overwrite: bool,
) -> int:  # fmt: skip
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.clip.pretrained import resolve_weights
    from clipseg_cli.data.classes import load_background, load_class_set
    from clipseg_cli.data.labels import read_labels_file, read_voc_annotations
    from clipseg_cli.device import resolve_device
    from clipseg_cli.labeling import LabelJob, OutputLayout, make_plan

    if not images.is_dir():
        raise ConfigError(f"image folder not found: {images}")
    if (labels is None) == (annotations is None):
        raise ConfigError("give exactly one of --labels FILE or --annotations DIR")
    class_set = load_class_set(classes)
    class_set = class_set.with_background(load_background(background, class_set))
    lam = class_set.lam if lam is None else lam
    _check_settings(template, lam, mu, max_side, synonyms)
    index = read_labels_file(labels) if labels is not None else read_voc_annotations(annotations)  # type: ignore[arg-type]
    layout = OutputLayout(out)
    plan = make_plan(images, index, class_set, layout, overwrite, need_cams=save_cams)
    torch_device = resolve_device(device)

    with progress_bar() as bar:
        task = bar.add_task("downloading CLIP weights", total=None, visible=False)

        def on_download(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total, visible=True)

        resolved = resolve_weights(weights, on_download)
    model = load_clip(resolved.path, torch_device)
    settings = CLIPESSettings(
        templates=tuple(template), synonyms=synonyms, lam=lam, mu=mu, crf=crf, max_side=max_side or None  # type: ignore[arg-type]
    )
    predictor = CLIPESPredictor(model, class_set, settings)
    job = LabelJob(
        images_root=images,
        layout=layout,
        predictor=predictor,
        save_cams=save_cams,
        visualize=visualize,
        settings={
            "images": str(images),
            "labels": str(labels or annotations),
            "classes": classes,
            "class_names": list(class_set.classes),
            "background": list(class_set.background),
            "templates": list(template),
            "synonyms": synonyms,
            "lambda": lam,
            "mu": mu,
            "crf": crf,
            "max_side": max_side,
            "device": str(torch_device),
            "weights": {"path": str(resolved.path), "sha256": resolved.sha256},
        },
    )
    if plan.done:
        console.print(f"resuming: {len(plan.done)} image(s) already have masks (use --overwrite to redo them)")
    with progress_bar() as bar:
        task = bar.add_task("labelling", total=len(plan.todo))
        summary = job.run(plan, on_progress=lambda _item: bar.advance(task))
    counts = summary["counts"]
    console.print(
        f"done: {counts['processed_this_run']} labelled, {counts['already_done']} already done, "
        f"{counts['skipped']} skipped, {counts['failed']} failed -> {out}"
    )
    for entry in summary["skipped"][:5]:
        console.print(f"  skipped {entry['image']}: {entry['reason']}")
    for entry in summary["failed"][:10]:
        console.print(f"  [red]failed[/] {entry['image']}: {entry['reason']}")
    if len(summary["failed"]) > 10:
        console.print(f"  ... and {len(summary['failed']) - 10} more failures in {layout.run_file}")
    return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK


def register(app: typer.Typer) -> None:
    app.command("label")(label)
