"""`wsss-label sharpness IMAGES --labels LABELS`: rank prompt templates by CLIP-ES's sharpness."""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.common import emit_report, load_clip_model
from clipseg_cli.cli.console import console, fail, handle_errors
from clipseg_cli.cli.progress import Progress
from clipseg_cli.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, ConfigError

SHOW_FAILED = 5
# A folder name that cannot hold images: make_plan excludes its output folder from the search.
_NO_OUTPUT = ".wsss-label-sharpness-no-output"


def _check_output_file(option: str, path: Optional[Path], allow_stdout: bool = False) -> None:
    if path is None or (allow_stdout and str(path) == "-"):
        return
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name such as {path / 'report.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder of {option} {path}: {exc.strerror or exc}") from None


def _quote_template(template: str) -> str:
    """`"a photo of a {}."` when double quotes are safe for a POSIX shell, else shlex quoting."""
    if not any(c in template for c in '"$`\\!'):
        return f'"{template}"'
    return shlex.quote(template)


def _label_command(images: Path, labels: Optional[Path], annotations: Optional[Path], classes: str,
                   weights: Optional[Path], template: str) -> str:  # fmt: skip
    parts = ["wsss-label", shlex.quote(str(images))]
    parts += ["--labels", shlex.quote(str(labels))] if labels is not None else ["--annotations", shlex.quote(str(annotations))]
    parts += ["--classes", shlex.quote(classes)]
    if weights is not None:
        parts += ["--weights", shlex.quote(str(weights))]
    parts += ["--template", _quote_template(template), "--out", "OUT"]
    return " ".join(parts)


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100.0 * value:.2f}" if pct else f"{value:.6g}"


def _print_table(report: dict[str, Any]) -> None:
    with_gt = "gt" in report
    table = Table(title=f"{len(report['results'])} templates, {report['n_images']} images", title_justify="left",
                  caption="sharpness: lower is better", caption_justify="left")  # fmt: skip
    table.add_column("rank", justify="right")
    table.add_column("template")
    table.add_column("sharpness", justify="right")
    if with_gt:
        table.add_column("mIoU %", justify="right")
    for row in report["results"]:
        cells = [str(row["rank"]), escape(row["template"]), escape(row["invalid"]) if "invalid" in row else _fmt(row["sharpness"])]
        if with_gt:
            cells.append(_fmt(row["miou"], pct=True))
        table.add_row(*cells, style="bold green" if row["rank"] == 1 else None)
    console.print(table)
    if with_gt:
        gt = report["gt"]
        rho = gt["spearman"]
        n = gt["n_images"]
        note = " (the paper finds it negative: lower sharpness, higher mIoU)" if rho is not None else ""
        console.print(f"Spearman rank correlation of sharpness and mIoU ({n} image{'s' if n != 1 else ''} "
                      f"with GT): {'n/a' if rho is None else f'{rho:+.3f}'}{note}")  # fmt: skip


def sharpness_command(
    images: Path = typer.Argument(..., help="Folder of images, searched recursively (.jpg .jpeg .png .bmp .webp .tif .tiff)."),
    labels: Optional[Path] = cv.labels_option(),
    annotations: Optional[Path] = cv.annotations_option(),
    classes: str = cv.classes_option(),
    templates: str = typer.Option(
        "imagenet80",
        "--templates",
        metavar="imagenet80|FILE",
        help="imagenet80 (CLIP's 80 ImageNet templates) or a file with one template per line, each with {}.",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use a random sample of N labelled images (see --seed)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit sample."),
    out: Optional[Path] = cv.out_option("Write the JSON report to this file ('-' for stdout).", default=None, metavar="FILE"),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Write a PNG bar chart of the ranking here."),
    gt: Optional[Path] = typer.Option(
        None,
        "--gt",
        metavar="DIR",
        help="Folder of GT label PNGs: also run the full pipeline per template and report mIoU and its rank correlation.",
    ),
    crf: Optional[bool] = typer.Option(None, "--crf/--no-crf", help="With --gt: dense CRF in the pipeline (default: on)."),
    weights: Optional[Path] = cv.weights_option(),
    device: str = cv.device_option(),
    max_side: int = typer.Option(
        1024, "--max-side", help="Scale larger images down to this long side first, as labelling does (0: never)."
    ),
) -> None:
    """Rank prompt templates by sharpness (CLIP-ES): no masks needed, only image-level labels."""
    raise typer.Exit(_run(images, labels, annotations, classes, templates, limit, seed, out, plot, gt, crf, weights, device, max_side))


@handle_errors
def _run(
    images: Path, labels: Optional[Path], annotations: Optional[Path], classes: str, templates_spec: str,
    limit: Optional[int], seed: int, out: Optional[Path], plot: Optional[Path], gt_dir: Optional[Path],
    crf: Optional[bool], weights: Optional[Path], device: str, max_side: int,
) -> int:  # fmt: skip
    from clipseg_cli import prompt_search as ps
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.data.labels import read_labels_file, read_voc_annotations
    from clipseg_cli.device import resolve_device
    from clipseg_cli.labeling import OutputLayout, make_plan

    # Everything that can be checked is checked before the model is loaded.
    if not images.is_dir():
        raise ConfigError(f"image folder not found: {images}")
    if (labels is None) == (annotations is None):
        raise ConfigError("give exactly one of --labels FILE or --annotations DIR")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {seed}")
    if max_side and max_side < 16:
        raise ConfigError(f"--max-side must be 0 (no limit) or at least 16, got {max_side}")
    if crf is not None and gt_dir is None:
        raise ConfigError("--crf/--no-crf apply to the pipeline runs of --gt; add --gt DIR or drop them")
    class_set = load_class_set(classes)
    template_list, duplicates = ps.load_templates(templates_spec)
    invalid = ps.too_long_templates(template_list, class_set)
    if len(invalid) == len(template_list):
        first = next(iter(invalid.items()))
        raise ConfigError(f"no template fits CLIP's 77 tokens (first: {first[0]!r}, {first[1]})")
    scored = [t for t in template_list if t not in invalid]
    index = read_labels_file(labels) if labels is not None else read_voc_annotations(annotations)  # type: ignore[arg-type]
    plan = make_plan(images, index, class_set, OutputLayout(images / _NO_OUTPUT), overwrite=True, need_cams=False)
    if not plan.todo:
        raise ConfigError(
            f"no labelled images: {len(plan.skipped)} image(s) in {images} without labels, "
            f"{len(plan.failed)} labelled file(s) missing or unusable"
        )
    chosen = ps.sample_items(plan.todo, limit, seed)
    gt_images = ps.pair_with_gt(chosen, gt_dir) if gt_dir is not None else None
    if gt_images is not None and not gt_images:
        raise ConfigError(f"--gt {gt_dir}: none of the {len(chosen)} images has a GT label map (GT/<rel>.png)")
    _check_output_file("--out", out, allow_stdout=True)
    _check_output_file("--plot", plot)
    torch_device = resolve_device(device)
    if duplicates:
        console.print(f"{duplicates} duplicate template(s) in {templates_spec} ignored")
    if limit is not None and limit < len(plan.todo):
        console.print(f"sample: {len(chosen)} of {len(plan.todo)} labelled images (--seed {seed})")

    model, resolved = load_clip_model(weights, torch_device)
    seconds: dict[str, float] = {}
    try:
        with Progress() as bar:
            start = time.perf_counter()
            task = bar.add("image embeddings", total=len(chosen))
            embedded = ps.embed_images(model, images, chosen, max_side or None, on_image=lambda: task.advance())
            task.finish()
            seconds["image_embeddings"] = time.perf_counter() - start
            if not embedded.items:
                raise ConfigError(f"none of the {len(chosen)} images could be read (first: {embedded.failed[0]['reason']})")
            start = time.perf_counter()
            task = bar.add("templates", total=len(scored), unit="templates")
            scores = ps.score_templates(
                model, class_set, embedded.features, [it.labels for it in embedded.items], scored,
                on_template=lambda: task.advance(),
            )  # fmt: skip
            task.finish()
            seconds["templates"] = time.perf_counter() - start
            correlation = None
            if gt_images is not None:
                usable = {it.rel for it in embedded.items}
                gt_images = [g for g in gt_images if g.item.rel in usable]
                start = time.perf_counter()
                task = bar.add("pipeline per template (--gt)", total=len(gt_images) * len(scored))
                mious = ps.gt_miou(
                    model, class_set, images, gt_images, scored, crf=crf is not False,
                    max_side=max_side or None, on_step=lambda: task.advance(),
                )  # fmt: skip
                seconds["gt_pipeline"] = time.perf_counter() - start
                scores = [ps.TemplateScore(s.template, s.sharpness, mious[s.template]) for s in scores]
                correlation = ps.spearman([s.sharpness for s in scores], [s.miou for s in scores])
    except KeyboardInterrupt:
        raise fail("interrupted; nothing was written", EXIT_INTERRUPTED) from None

    scores += [ps.TemplateScore(t, math.nan, invalid=reason) for t, reason in invalid.items()]
    ranked = ps.rank_results(scores)
    failed = plan.failed + embedded.failed
    report = _report(
        ranked, embedded, failed, len(plan.skipped), seconds, correlation, gt_images,
        settings={
            "images": str(images),
            "labels": str(labels or annotations),
            "classes": classes,
            "class_names": list(class_set.classes),
            "class_prompts": list(class_set.prompts),
            "templates": templates_spec,
            "n_templates": len(template_list),
            "limit": limit,
            "seed": seed,
            "max_side": max_side,
            "device": str(torch_device),
            "weights": {"path": str(resolved.path), "sha256": resolved.sha256},
            **({"gt": str(gt_dir), "crf": crf is not False} if gt_dir is not None else {}),
        },
    )  # fmt: skip
    _print_table(report)
    if invalid:
        console.print(f"[yellow]{len(invalid)} template(s) too long for CLIP's 77 tokens[/]: not scored, never recommended")
    if failed:
        console.print(f"[yellow]{len(failed)} labelled image(s) left out[/] (missing or unreadable):")
        for entry in failed[:SHOW_FAILED]:
            console.print(f"  {escape(entry['image'])}: {escape(entry['reason'])}")
        if len(failed) > SHOW_FAILED:
            console.print(f"  ... and {len(failed) - SHOW_FAILED} more" + (f" (listed in {out})" if out else ""))
    try:
        emit_report(out, report)
        if plot is not None:
            ps.plot_ranking(plot, ranked, correlation=correlation)
            console.print(f"plot: {escape(str(plot))}")
    except OSError as exc:
        raise ConfigError(f"cannot write output: {exc}") from None
    best = ranked[0]
    console.print(f"best template: [bold]{escape(best.template)}[/] (sharpness {_fmt(best.sharpness)}). Label with it:")
    console.print(escape(_label_command(images, labels, annotations, classes, weights, best.template)), soft_wrap=True)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _report(
    ranked: list, embedded: Any, failed: list[dict[str, str]], n_skipped: int, seconds: dict[str, float],
    correlation: float | None, gt_images: Optional[list], settings: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    def number(value: float | None) -> float | None:
        return None if value is None or math.isnan(value) else float(value)

    results = []
    for rank, score in enumerate(ranked, 1):
        row: dict[str, Any] = {"rank": rank, "template": score.template, "sharpness": number(score.sharpness)}
        if score.invalid is not None:
            row["invalid"] = score.invalid
        if gt_images is not None:
            row["miou"] = number(score.miou)
        results.append(row)
    report: dict[str, Any] = {
        "tool": "wsss-label sharpness",
        "results": results,
        "best": {"template": ranked[0].template, "sharpness": number(ranked[0].sharpness)},
        "n_images": len(embedded.items),
        "images": [item.rel for item in embedded.items],
        "failed": failed,
        "skipped_unlabelled": n_skipped,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "settings": settings,
    }
    if gt_images is not None:
        report["gt"] = {"n_images": len(gt_images), "images": [g.item.rel for g in gt_images], "spearman": correlation}
    return report


def register(app: typer.Typer) -> None:
    cv.command(app, "sharpness", sharpness_command)
