"""`wsss-label [label] IMAGES --labels LABELS --out OUT`: CLIP-ES pseudo masks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Optional

import typer

from clipseg_cli.auto_labels import DEFAULT_LABEL_THRESHOLD
from clipseg_cli.cli import conventions as cv
from clipseg_cli.cli.console import console, handle_errors, warn
from clipseg_cli.cli.progress import Progress, echo, failure_line
from clipseg_cli.data.limits import DEFAULT_MAX_PIXELS, PILLOW_PIXEL_LIMIT
from clipseg_cli.errors import EXIT_OK, EXIT_SOME_FAILED, ConfigError
from clipseg_cli.io.lock import holds_output

if TYPE_CHECKING:
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.data.classes import ClassSet
    from clipseg_cli.data.labels import LabelIndex
    from clipseg_cli.labeling import Engine, LabelJob, Outcome, OutputLayout, Plan
    from clipseg_cli.relabel import Redo

AUTO = "auto"  # --labels auto
BACKENDS = ("local", "ray")
Backend = Literal["local", "ray"]
Synonyms = Literal["sentence", "feature", "cam"]  # cam.pipeline.SYNONYM_MODES
CrfBackend = Literal["auto", "pydensecrf", "torch"]  # postprocess.crf.CRF_BACKEND_CHOICES
Precision = Literal["fp32", "bf16", "fp16"]  # cam.pipeline.PRECISIONS
RedoMark = Literal["rejected", "fix"]  # relabel.REDO_MARKS


def _check_settings(
    templates: list[str], lam: float, mu: float, max_side: int, synonyms: str, max_pixels: int = DEFAULT_MAX_PIXELS
) -> None:
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
    if not 1 <= max_pixels <= PILLOW_PIXEL_LIMIT:
        raise ConfigError(f"--max-pixels must be between 1 and {PILLOW_PIXEL_LIMIT}, got {max_pixels}")


def _check_template_lengths(templates: list[str], class_set: ClassSet) -> None:
    """Every prompt (template x class prompt, synonym, background word) fits CLIP's 77 tokens."""
    from clipseg_cli.clip.tokenizer import template_too_long
    from clipseg_cli.prompt_search import check_template

    names = [*class_set.prompts, *(s for group in class_set.synonyms for s in group), *class_set.background]
    for template in templates:
        check_template(template, "--template")  # no other str.format fields
        problem = template_too_long(template, names)
        if problem is not None:
            raise ConfigError(f"--template {template!r} is too long: {problem}")


def _check_scale(workers: Optional[int], backend: str, ray_address: Optional[str], batch_size: Optional[int] = None) -> None:
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size is not None and backend == "ray":
        raise ConfigError("--batch-size is for --backend local; each Ray task labels its images one at a time")
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 (everything in this process) or more, got {workers}")
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if ray_address and backend != "ray":
        raise ConfigError("--ray-address needs --backend ray")
    if workers is not None and backend == "ray":
        raise ConfigError("--workers is for --backend local; each Ray task labels its shard on one CPU (or GPU)")


def label(
    images: Path = typer.Argument(..., help="Folder of images, searched recursively (.jpg .jpeg .png .bmp .webp .tif .tiff)."),
    labels: Optional[str] = cv.labels_option(
        extra=' Or "auto": CLIP chooses each image\'s labels (written to OUT/labels.auto.json; see --label-threshold).'
    ),
    annotations: Optional[Path] = cv.annotations_option(),
    out: Path = cv.out_option("Output folder: masks/, cams/, vis/, run.json."),
    classes: str = cv.classes_option(),
    weights: Optional[Path] = cv.weights_option(),
    template: list[str] = typer.Option(
        ["a clean origami {}."], "--template", "-t", help="Prompt template with {} for the class name; repeat to average several."
    ),
    background: Optional[str] = typer.Option(
        None, "--background", metavar="voc|coco|none|FILE", help="Background prompts; default: the class set's."
    ),
    lam: Optional[float] = typer.Option(None, "--lambda", help="CAA box threshold (default 0.4 voc/custom, 0.7 coco)."),
    mu: float = typer.Option(0.95, "--mu", help="CRF confidence below which a pixel becomes 255 (ignored)."),
    synonyms: Synonyms = typer.Option("sentence", "--synonyms", help="Level at which a class's synonyms are fused."),
    crf: bool = typer.Option(True, "--crf/--no-crf", help="Dense CRF (else argmax of [1 - max refined, refined], no 255)."),
    crf_backend: CrfBackend = typer.Option(
        "auto",
        "--crf-backend",
        help="The CRF's code: pydensecrf (CPU) or the same CRF in torch on the model's device; auto: torch when the model runs on CUDA.",
    ),
    save_cams: bool = typer.Option(False, "--save-cams", help="Also write cams/<rel>.npz (labels, cam, refined, confidence)."),
    visualize: bool = typer.Option(
        False, "--visualize", help="Also write vis/<rel>.png: image | mask overlay | CAM per label, with a colour key."
    ),
    device: str = cv.device_option(),
    max_side: int = typer.Option(1024, "--max-side", help="Scale larger images down to this long side first (0: never)."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS,
        "--max-pixels",
        help="Refuse (fail) larger images before decoding them: outputs are full-size, memory grows with the pixels.",
    ),
    overwrite: bool = cv.overwrite_option(),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        help="Worker processes that decode images and run the CRF and writing while this process runs the model; "
        "0: everything in this process. Default: one per CPU core, at most 8 (0 on one core or for one image).",
    ),
    backend: Backend = typer.Option(
        "local",
        "--backend",
        help="Where images are labelled: here, or sharded over a Ray cluster (needs: pip install 'wsss-label\\[ray]').",
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        metavar="ADDRESS",
        help="With --backend ray: the cluster to join (e.g. auto, HOST:6379); default $RAY_ADDRESS, else a local Ray.",
    ),
    report: bool = typer.Option(False, "--report", help="At the end, build OUT/report/index.html (as `wsss-label report OUT`)."),
    label_threshold: Optional[float] = typer.Option(
        None,
        "--label-threshold",
        help=f"With --labels auto: keep the classes whose CLIP score (softmax over classes and background words) is above this; "
        f"the top class is kept unless a background word beats it (default {DEFAULT_LABEL_THRESHOLD}).",
    ),
    image_list: Optional[Path] = typer.Option(
        None,
        "--list",
        metavar="FILE",
        help="Only the images listed in FILE, one per line, relative to IMAGES, extension optional (e.g. VOC's ImageSets/Segmentation/train.txt).",
    ),
    redo: Optional[RedoMark] = typer.Option(
        None,
        "--redo",
        help="Relabel only the images the review marks so (into the same --out, other settings allowed; the other masks are kept).",
    ),
    review: Optional[Path] = cv.review_option(
        "With --redo: the review file (default: OUT/review.json, written by `wsss-label report OUT`)."
    ),
    batch_size: Optional[int] = cv.batch_size_option(
        None,
        " Default: 16 on a GPU, 1 on the CPU. On a GPU, resizing, the torch CRF and label maps run there too.",
        what="Images of one padded size through the model together (fewer when larger than 512x512).",
    ),
    precision: Precision = typer.Option(
        "fp32", "--precision", help="Precision of the frozen ViT blocks (Grad-CAM's last block and CAA stay fp32)."
    ),
) -> None:
    """Make CLIP-ES pseudo masks for a folder of images with image-level labels."""
    raise typer.Exit(
        _run(
            images,
            labels,
            annotations,
            out,
            classes,
            weights,
            template,
            background,
            lam,
            mu,
            synonyms,
            crf,
            save_cams,
            visualize,
            device,
            max_side,
            overwrite,
            workers,
            backend,
            ray_address,
            report,
            crf_backend,
            redo,
            review,
            label_threshold=label_threshold,
            image_list=image_list,
            max_pixels=max_pixels,
            batch_size=batch_size,
            precision=precision,
        )
    )


@handle_errors
@holds_output()
def _run(
    images: Path, labels: Optional[str | Path], annotations: Optional[Path], out: Path, classes: str,
    weights: Optional[Path], template: list[str], background: Optional[str], lam: Optional[float], mu: float,
    synonyms: str, crf: bool, save_cams: bool, visualize: bool, device: str, max_side: int, overwrite: bool,
    workers: Optional[int] = None, backend: str = "local", ray_address: Optional[str] = None, report: bool = False,
    crf_backend: str = "auto", redo: Optional[str] = None, review: Optional[Path] = None,
    label_threshold: Optional[float] = None, image_list: Optional[Path] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: Optional[int] = None, precision: str = "fp32",
) -> int:  # fmt: skip
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.cli.common import load_resolved_clip, resolve_clip_weights
    from clipseg_cli.data.classes import load_background, load_class_set
    from clipseg_cli.data.image_list import read_image_list
    from clipseg_cli.data.labels import read_labels_file, read_voc_annotations
    from clipseg_cli.device import resolve_device
    from clipseg_cli.labeling import LabelJob, OutputLayout, check_rerun, make_plan
    from clipseg_cli.postprocess.crf import resolve_crf_backend

    if not images.is_dir():
        raise ConfigError(f"image folder not found: {images}")
    if (labels is None) == (annotations is None):
        raise ConfigError("give exactly one of --labels FILE, --labels auto or --annotations DIR")
    auto = isinstance(labels, str) and labels == AUTO
    if label_threshold is not None and not auto:
        raise ConfigError("--label-threshold needs --labels auto")
    threshold = DEFAULT_LABEL_THRESHOLD if label_threshold is None else label_threshold
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"--label-threshold must be in [0, 1), got {threshold}")
    class_set = load_class_set(classes)
    class_set = class_set.with_background(load_background(background, class_set))
    lam = class_set.lam if lam is None else lam
    _check_settings(template, lam, mu, max_side, synonyms, max_pixels)
    _check_template_lengths(template, class_set)
    _check_scale(workers, backend, ray_address, batch_size)
    _check_redo(redo, review, overwrite)
    if backend == "ray":
        from clipseg_cli.scale.ray_backend import check_reachable, cluster_address, import_ray

        import_ray()  # not installed: exit 2 before anything is loaded
        check_reachable(cluster_address(ray_address))  # nobody listening: exit 2 at once
    only = read_image_list(image_list) if image_list is not None else None
    index = None
    if not auto:
        index = read_labels_file(Path(labels)) if labels is not None else read_voc_annotations(annotations)  # type: ignore[arg-type]
    layout = OutputLayout(out)
    # On Ray each task resolves --device on its own node; here the weights are only checked.
    torch_device = resolve_device(device) if backend == "local" else resolve_device("cpu")
    crf_backend, crf_device = resolve_crf_backend(crf_backend, str(torch_device))
    resolved = resolve_clip_weights(weights)
    run_settings = {
        "images": str(images),
        "images_root": str(images.resolve()),
        "images_from_run": _relative_to(images, out),
        "labels": str(labels or annotations),
        "classes": classes,
        "class_names": list(class_set.classes),
        "class_prompts": list(class_set.prompts),
        "class_synonyms": [list(s) for s in class_set.synonyms],
        "background": list(class_set.background),
        "templates": list(template),
        "synonyms": synonyms,
        "lambda": lam,
        "mu": mu,
        "crf": crf,
        "crf_backend": crf_backend,
        "crf_device": crf_device,
        "precision": precision,
        "max_side": max_side,
        "device": str(torch_device) if backend == "local" else device,
        "weights": {"path": str(resolved.path), "sha256": resolved.sha256},
    }
    settings = CLIPESSettings(
        templates=tuple(template),
        synonyms=synonyms,
        lam=lam,
        mu=mu,
        crf=crf,
        max_side=max_side or None,  # type: ignore[arg-type]
        crf_backend=crf_backend,
        crf_device=crf_device,
        precision=precision,  # type: ignore[arg-type]
    )
    predictor = None
    auto_entries: dict[str, dict] = {}
    auto_failed: dict[str, str] = {}
    if auto:
        run_settings["label_threshold"] = threshold

        def new_predictor() -> CLIPESPredictor:
            return CLIPESPredictor(load_resolved_clip(resolved, torch_device), class_set, settings)

        index, auto_entries, auto_failed, predictor = _auto_labels(images, layout, only, threshold, overwrite, run_settings, new_predictor)
    assert index is not None
    plan = make_plan(images, index, class_set, layout, overwrite, need_cams=save_cams, only=only)
    if auto:
        _auto_plan_reasons(plan, auto_entries, auto_failed, threshold)
    # Before the model: a conflict costs nothing.
    redo_plan = _plan_redo(layout, plan, run_settings, redo, review) if redo else None
    relabelled = check_rerun(layout, plan, run_settings) if redo_plan is None else []
    if backend == "local" and plan.todo and predictor is None:  # nothing left to do: no model to load
        predictor = CLIPESPredictor(load_resolved_clip(resolved, torch_device), class_set, settings)
    job = LabelJob(
        images_root=images,
        layout=layout,
        predictor=predictor,
        save_cams=save_cams,
        visualize=visualize,
        max_pixels=max_pixels,
        settings=run_settings if redo_plan is None else redo_plan.base_settings,
        redo=None if redo_plan is None else redo_plan.record,
    )
    if plan.done and redo_plan is None:
        console.print(f"resuming: {len(plan.done)} image(s) already have masks (use --overwrite to redo them)")
    if relabelled:
        console.print(f"{len(relabelled)} finished image(s) have other labels now and are redone (e.g. {relabelled[0].rel})")
    engine, description = _engine(job, plan, workers, backend, ray_address, resolved.path, class_set, settings, device, batch_size)
    for entry in plan.failed:
        echo(failure_line(entry["image"], entry["reason"]), style="red")
    with Progress() as progress:
        task = progress.add(description, total=len(plan.todo), count_failures=True)
        task.update(failed=len(plan.failed))

        def on_outcome(outcome: Outcome) -> None:
            task.advance(failed=outcome.error is not None)
            if outcome.error is not None:
                progress.echo(failure_line(outcome.item.rel, outcome.error), style="red")

        summary = job.run(plan, engine=engine, on_outcome=on_outcome)
    counts = summary["counts"]
    console.print(
        f"done: {counts['processed_this_run']} labelled, {counts['already_done']} already done, "
        f"{counts['skipped']} skipped, {counts['failed']} failed -> {out}"
    )
    for entry in summary["skipped"][:5]:
        echo(f"  skipped {entry['image']}: {entry['reason']}")
    if len(summary["skipped"]) > 5:
        echo(f"  ... and {len(summary['skipped']) - 5} more skipped, listed in {layout.run_file}")
    if summary["failed"]:
        echo(f"failures are listed in {layout.run_file}")
    if report and summary["images"]:
        from clipseg_cli.cli.cmd_report import build_with_progress

        console.print(f"report: {build_with_progress(out).index}")
    return EXIT_SOME_FAILED if summary["failed"] else EXIT_OK


def _auto_labels(
    images: Path, layout: OutputLayout, only: Optional[list[str]], threshold: float, overwrite: bool,
    run_settings: dict, new_predictor: Callable[[], CLIPESPredictor],
) -> tuple[LabelIndex, dict[str, dict], dict[str, str], Optional[CLIPESPredictor]]:  # fmt: skip
    """--labels auto: the labels of OUT/labels.auto.json, after scoring the images it lacks.

    Returns the label index, every entry, the images that could not be scored and the
    predictor (None when every image already had its labels: no model was loaded).
    """
    from clipseg_cli.auto_labels import (
        AUTO_LABELS_FILE,
        AutoLabelRun,
        LabelScorer,
        label_images,
        read_auto_labels,
        write_auto_labels,
    )
    from clipseg_cli.data.labels import LabelIndex
    from clipseg_cli.labeling import LABEL_DECISIVE, input_images
    from clipseg_cli.run_settings import read_record, rerun_conflict

    path = layout.root / AUTO_LABELS_FILE
    previous = {} if overwrite else read_auto_labels(path)
    if previous:  # labels chosen with other settings are not reused: same rule as for masks
        record = read_record(layout.run_file) or {}
        old = record.get("settings")
        message = rerun_conflict(layout.root, old if isinstance(old, dict) else None, run_settings, LABEL_DECISIVE)
        if message:
            raise ConfigError(message)
    todo = [rel for rel in input_images(images, layout, only) if rel not in previous]
    predictor = None
    result = AutoLabelRun({}, {})
    if todo:
        if not layout.run_file.exists():  # a record of the settings even if stopped while choosing
            from clipseg_cli.io.atomic import write_json

            write_json(layout.run_file, {"tool": "wsss-label", "state": "choosing labels", "settings": run_settings})
        predictor = new_predictor()
        if previous:
            console.print(f"resuming: {len(previous)} image(s) already have labels in {path}")
        try:
            with Progress() as progress:
                task = progress.add("choosing labels", total=len(todo), count_failures=True)

                def on_image(rel: str, entry: Optional[dict]) -> None:
                    task.advance(failed=entry is None)  # the failure's line comes with the plan's

                label_images(LabelScorer(predictor), images, todo, threshold, on_image, result)
        finally:  # also when interrupted: the labels chosen so far are kept for the rerun
            write_auto_labels(path, {**previous, **result.entries})
        console.print(f"labels: {len(result.entries)} image(s) labelled by CLIP -> {path}")
    entries = {**previous, **result.entries}
    index = LabelIndex({rel: list(e["labels"]) for rel, e in entries.items()}, str(path))
    return index, entries, result.failed, predictor


def _auto_plan_reasons(plan: Plan, entries: dict[str, dict], failed: dict[str, str], threshold: float) -> None:
    """Images CLIP could not score are failures; an image with no label says why."""
    from clipseg_cli.auto_labels import no_label_reason

    skipped = []
    for entry in plan.skipped:
        rel = entry["image"]
        if rel in failed:
            plan.failed.append({"image": rel, "reason": failed[rel]})
        elif rel in entries and not entries[rel]["labels"]:
            skipped.append({"image": rel, "reason": no_label_reason(entries[rel], threshold)})
        else:
            skipped.append(entry)
    plan.skipped = skipped


def _check_redo(redo: Optional[str], review: Optional[Path], overwrite: bool) -> None:
    if review is not None and redo is None:
        raise ConfigError("--review needs --redo rejected|fix (which marked images to relabel)")
    if redo is not None and overwrite:
        raise ConfigError("--redo relabels the marked images only; --overwrite redoes every image: give one of them")


def _plan_redo(layout: OutputLayout, plan: Plan, settings: dict, redo: str, review: Optional[Path]) -> Redo:
    """The redo of the images the review marks ``redo``, said in a line or two."""
    from clipseg_cli.labeling import LABEL_DECISIVE
    from clipseg_cli.relabel import plan_redo
    from clipseg_cli.review import find_review
    from clipseg_cli.run_settings import describe, differences

    path = find_review(layout.root / "masks", review)
    if path is None:
        raise ConfigError(f"--redo {redo}: no review file: give --review FILE or mark images in `wsss-label report {layout.root}`")
    if review is None:
        console.print(f"review: {path} (marks of `wsss-label report`)")
    made = plan_redo(layout, plan, settings, redo, path)
    changed = differences(made.base_settings, settings, LABEL_DECISIVE)
    console.print(
        f"redo: {len(made.targets)} image(s) marked {redo} are relabelled"
        + (f" with {describe(changed)}" if changed else " with the run's settings")
        + f"; {len(plan.done)} other mask(s) kept"
    )
    if made.not_found:
        warn(f"{len(made.not_found)} image(s) marked {redo} are not labelled images of this run (e.g. {made.not_found[0]}): not relabelled")
    return made


def _relative_to(images: Path, out: Path) -> str | None:
    """The image folder as a path relative to the run folder (None where there is none, e.g. another drive)."""
    import os

    try:
        return Path(os.path.relpath(images.resolve(), out.resolve())).as_posix()
    except ValueError:
        return None


def _engine(
    job: LabelJob, plan: Plan, workers: Optional[int], backend: str, ray_address: Optional[str],
    weights: Path, class_set: ClassSet, settings: CLIPESSettings, device: str, batch_size: Optional[int] = None,
) -> tuple[Optional[Engine], str]:  # fmt: skip
    """The engine that does the images (None: serial, in this process) and the progress bar's text."""
    if not plan.todo:
        return None, "labelling"
    if backend == "ray":
        from clipseg_cli.scale.ray_backend import ShardSpec, ray_engine

        spec = ShardSpec(
            images_root=str(job.images_root.resolve()),
            out=str(job.layout.root.resolve()),
            weights=str(Path(weights).resolve()),
            class_set=class_set,
            settings=settings,
            device=device,
            save_cams=job.save_cams,
            visualize=job.visualize,
            max_pixels=job.max_pixels,
        )
        return ray_engine(spec, ray_address), "labelling on Ray"
    from clipseg_cli.scale import default_workers

    n = default_workers(len(plan.todo)) if workers is None else workers
    assert job.predictor is not None  # local with images to do: the model is loaded
    model_device = job.predictor.device
    if batch_size is None:
        from clipseg_cli.scale.batched import default_batch_size

        batch_size = default_batch_size(model_device)
    if batch_size > 1 or model_device.type == "cuda":
        from clipseg_cli.scale.batched import batched_engine

        workers_text = f", {n} worker{'s' if n > 1 else ''}" if n else ""
        return batched_engine(job, n, batch_size), f"labelling (batches of {batch_size}{workers_text})"
    if n == 0:
        return None, "labelling"
    from clipseg_cli.scale.workers import worker_engine

    return worker_engine(job, n), f"labelling ({n} worker{'s' if n > 1 else ''})"


def register(app: typer.Typer) -> None:
    cv.command(app, "label", label)
