"""Building OUT/report/: gather the records, render what changed in a process pool, write the page."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipseg_cli.errors import ConfigError
from clipseg_cli.evaluation.matching import index_folder
from clipseg_cli.io.atomic import remove_stale_parts, write_bytes
from clipseg_cli.report import records as rec
from clipseg_cli.report import work
from clipseg_cli.report.cache import CACHE_FILE, BuildCache, file_sig
from clipseg_cli.report.page import PageContext, colour_list, render_page
from clipseg_cli.report.render import palette
from clipseg_cli.report.run import RunFolder, RunImage, load_run
from clipseg_cli.review import REVIEW_FILE, ReviewError, load_review

REPORT_DIR = "report"
INDEX = "index.html"
INLINE_BELOW = 48  # fewer tasks than this run in this process: a pool would cost more than it saves
PICTURE_DIRS = (work.THUMBS, work.THUMBS_GT, work.OVERLAYS, work.OVERLAYS_GT, work.PHOTOS, work.ERRORS, work.HEAT)

# on_phase(description, total) -> advance(n): how the builder reports progress.
Advance = Callable[[int], None]
OnPhase = Callable[[str, int], Advance]


@dataclass
class BuildResult:
    index: Path
    n_images: int  # labelled images in the run
    n_shown: int  # on the page (after --limit)
    computed: int  # images whose statistics were computed (the rest came from the cache)
    rendered: int  # images whose pictures were rendered (the rest were up to date)
    rendered_stems: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)  # shown, in page order
    gt: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    images_root: Path | None = None  # the run's image folder, if found
    image_names: list[str] = field(default_factory=list)  # every labelled image of the run (run.json's paths)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver where there is one (safe with threads in the parent), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


@contextlib.contextmanager
def _workers_skip_main() -> Iterator[None]:
    """Pool workers need nothing from ``__main__`` (the tasks live in
    clipseg_cli.report.work), but a spawn/forkserver child re-runs the main script first: for
    the ``wsss-label`` console script that imports the whole CLI and torch, seconds per
    worker. While the workers start, the main module shows no file, so they skip it."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if main is None or getattr(spec, "name", None) is not None or path is None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def run_tasks(tasks: Sequence[work.Task], workers: int, advance: Advance) -> Iterator[dict[str, Any]]:
    """Results of ``tasks`` (any order); in a process pool when there are enough of them.

    If the pool cannot run (no worker can start, e.g. from ``python - < script``), the
    chunks it did not finish are done in this process instead."""
    if workers <= 1 or len(tasks) < INLINE_BELOW:
        for task in tasks:
            result = work.run_task(task)
            advance(1)
            yield result
        return
    size = max(1, min(32, len(tasks) // (workers * 8)))
    chunks = [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]
    pending = set(range(len(chunks)))
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)), mp_context=_context(), initializer=work.init_worker, initargs=(os.getpid(),)
    )
    try:
        with _workers_skip_main():  # workers start on the first submissions
            futures = {pool.submit(work.run_chunk, chunk): k for k, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            results = future.result()
            pending.discard(futures[future])
            advance(len(results))
            yield from results
    except BrokenProcessPool:
        pass  # finish below, in this process
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for k in sorted(pending):
        for task in chunks[k]:
            result = work.run_task(task)
            advance(1)
            yield result


def _url(path: str) -> str:
    return urllib.parse.quote(path, safe="/:")


def _photo_base(images_root: Path | None, report_dir: Path) -> str:
    """URL of the image folder as seen from the page: relative when possible."""
    if images_root is None:
        return ""
    try:
        rel = os.path.relpath(images_root, report_dir.resolve())
    except ValueError:  # another drive on Windows
        return images_root.as_uri() + "/"
    return _url(Path(rel).as_posix()) + "/"


@dataclass
class _Item:
    image: RunImage
    gt: Path | None
    mask_sig: list[int] | None
    cams_sig: list[int] | None
    gt_sig: list[int] | None
    photo_sig: list[int] | None

    @property
    def stem(self) -> str:
        return self.image.stem

    @property
    def photo(self) -> str | None:
        return str(self.image.photo) if self.image.photo is not None and self.photo_sig is not None else None


def _check_options(sort: str, limit: int | None, gt: Path | None) -> None:
    if sort not in rec.SORT_KEYS:
        raise ConfigError(f"--sort {sort!r}: use one of {', '.join(rec.CLI_SORT_KEYS)}")
    if sort == "iou" and gt is None:
        raise ConfigError("--sort iou needs --gt")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    if gt is not None and not Path(gt).is_dir():
        raise ConfigError(f"--gt {gt} is not a folder")


def _prepare_report_dir(report_dir: Path) -> None:
    if report_dir.exists() and not report_dir.is_dir():
        raise ConfigError(f"{report_dir} exists and is not a folder")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {report_dir}: {exc.strerror or exc}") from None
    if not os.access(report_dir, os.W_OK):
        raise ConfigError(f"cannot write to {report_dir}")


def _collect(tasks: list[work.Task], workers: int, on_phase: OnPhase | None, description: str) -> Iterator[dict[str, Any]]:
    advance = on_phase(description, len(tasks)) if on_phase is not None and tasks else (lambda n: None)
    for result in run_tasks(tasks, workers, advance):
        if "error" in result:
            raise ConfigError(result["error"])
        yield result


def _remove_pictures(report_dir: Path, stem: str, heat: dict[str, Any] | None = None) -> None:
    names = [(work.THUMBS, ".jpg"), (work.THUMBS_GT, ".jpg"), (work.OVERLAYS, ".png"),
             (work.OVERLAYS_GT, ".png"), (work.PHOTOS, ".jpg"), (work.ERRORS, ".png")]  # fmt: skip
    names += [(work.HEAT, work.heat_name(kind, label)) for kind, label in _heat_files(heat)]
    for folder, ext in names:
        with contextlib.suppress(OSError):
            (report_dir / folder / f"{stem}{ext}").unlink()


def _heat_files(heat: Any) -> list[tuple[str, int]]:
    """(kind, label) of each heat map file a cached ``heat`` part lists."""
    if not isinstance(heat, dict):
        return []
    return [(kind, int(label)) for kind in heat.get("kinds") or [] for label in heat.get("labels") or []]


def _review_data(run: RunFolder, warnings: list[str]) -> dict[str, Any] | None:
    """OUT/review.json for the page (its marks show at once, also from disk); None when there
    is none. A file that cannot be used is a warning, not a failed report."""
    path = run.out / REVIEW_FILE
    if not path.is_file():
        return None
    try:
        review = load_review(path, known=[image.rel for image in run.images])
    except ReviewError as exc:
        warnings.append(f"{exc}: the page starts without its marks")
        return None
    return {"updated_at": review.updated_at, "marks": review.to_json()["marks"]}


def build(
    out_dir: str | os.PathLike[str],
    gt: str | os.PathLike[str] | None = None,
    sort: str = "confidence",
    limit: int | None = None,
    images: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    on_phase: OnPhase | None = None,
) -> BuildResult:
    """Build (or bring up to date) ``out_dir/report/index.html``; see :func:`build_report`."""
    started = time.perf_counter()
    gt_dir = Path(gt) if gt is not None else None
    _check_options(sort, limit, gt_dir)
    run: RunFolder = load_run(Path(out_dir), Path(images) if images is not None else None)
    report_dir = run.out / REPORT_DIR
    _prepare_report_dir(report_dir)
    for folder in PICTURE_DIRS:
        remove_stale_parts(report_dir / folder)
    n_labels = len(run.label_names)
    gt_files: dict[str, Path] = {}
    if gt_dir is not None:
        gt_files = index_folder(gt_dir, ".png")
        if not gt_files:
            raise ConfigError(f"--gt {gt_dir} holds no .png label maps")
    workers = workers or default_workers()
    warnings: list[str] = []

    items = [
        _Item(
            image=image,
            gt=gt_files.get(image.stem),
            mask_sig=file_sig(image.mask),
            cams_sig=file_sig(image.cams),
            gt_sig=file_sig(gt_files.get(image.stem)),
            photo_sig=file_sig(image.photo),
        )
        for image in run.images
    ]
    by_stem = {it.stem: it for it in items}
    if run.images_root is None:
        warnings.append(
            f"image folder {run.settings.get('images_root') or run.settings.get('images')!r} of run.json not found: the pictures show masks only (give --images DIR)"
        )
    else:
        missing = [it.image.rel for it in items if it.photo_sig is None]
        if missing:
            warnings.append(f"{len(missing)} photo(s) not found under {run.images_root} (e.g. {missing[0]}): shown as masks only")

    cache = BuildCache.load(report_dir / CACHE_FILE)
    root = str(report_dir)

    # The parts of an image and the keys they are cached under (None: the part does not apply).
    def keys(it: _Item) -> dict[str, list[Any] | None]:
        has_gt = it.gt is not None
        return {
            "stats": BuildCache.stats_key(it.mask_sig, it.cams_sig, n_labels),
            "gt": BuildCache.gt_key(it.mask_sig, it.gt_sig, n_labels) if has_gt else None,
            "pictures": BuildCache.pictures_key(it.mask_sig, it.photo_sig, it.photo),
            "gt_pictures": BuildCache.gt_pictures_key(it.mask_sig, it.gt_sig, it.photo_sig, it.photo) if has_gt else None,
            "heat": BuildCache.heat_key(it.cams_sig) if it.cams_sig is not None else None,
        }

    def stale(it: _Item, parts: Sequence[str]) -> set[str]:
        """The parts of ``parts`` that must be (re)made for this image."""
        out = set()
        for part, key in keys(it).items():
            if part not in parts or key is None:
                continue
            value = cache.get(it.stem, part, key)
            if value is None:
                out.add(part)
            elif part == "pictures":
                files = [work.out_path(root, work.THUMBS, it.stem, ".jpg")]
                if value.get("overlay") != "mask":
                    files.append(work.out_path(root, work.OVERLAYS, it.stem, ".png"))
                if not all(os.path.isfile(f) for f in files):
                    out.add(part)
            elif part == "gt_pictures" and not all(
                os.path.isfile(work.out_path(root, folder, it.stem, ext))
                for folder, ext in ((work.THUMBS_GT, ".jpg"), (work.ERRORS, ".png"))
            ):
                out.add(part)
            elif part == "heat" and not all(
                os.path.isfile(work.out_path(root, work.HEAT, it.stem, work.heat_name(kind, label))) for kind, label in _heat_files(value)
            ):
                out.add(part)
        return out

    def task(it: _Item, parts: set[str]) -> work.Task:
        return work.Task(
            stem=it.stem,
            mask=str(it.image.mask),
            n_labels=n_labels,
            report_dir=root,
            stats="stats" in parts,
            pictures="pictures" in parts,
            gt_stats="gt" in parts,
            gt_pictures="gt_pictures" in parts,
            cams=str(it.image.cams) if it.cams_sig is not None else None,
            gt=str(it.gt) if it.gt is not None else None,
            photo=it.photo,
            heat="heat" in parts,
        )

    rendered: list[str] = []
    computed = 0

    def run_parts(selected: Iterable[_Item], parts: Sequence[str], description: str) -> None:
        nonlocal computed
        todo = [(it, stale(it, parts)) for it in selected]
        tasks = [task(it, p) for it, p in todo if p]
        for result in _collect(tasks, workers, on_phase, description):
            it = by_stem[result["stem"]]
            k = keys(it)
            if "stats" in result:
                cache.put(it.stem, "stats", k["stats"], result["stats"])
                computed += 1
            if "gt_stats" in result:
                cache.put(it.stem, "gt", k["gt"], result["gt_stats"])
            if "pictures" in result:
                pictures = result["pictures"]
                cache.put(it.stem, "pictures", k["pictures"], {"photo": pictures["photo"], "overlay": pictures["overlay"]})
                rendered.append(it.stem)
                if pictures.get("warning"):
                    warnings.append(pictures["warning"])
            if "gt_pictures" in result:
                cache.put(it.stem, "gt_pictures", k["gt_pictures"], True)
            if "heat" in result:
                old = cache.entries.get(it.stem, {}).get("heat")
                for kind, label in set(_heat_files(old)) - set(_heat_files(result["heat"])):
                    with contextlib.suppress(OSError):
                        work.out_path(root, work.HEAT, it.stem, work.heat_name(kind, label)).unlink()
                cache.put(it.stem, "heat", k["heat"], result["heat"])

    try:
        if limit is None:  # one pass: each stale image is read once for all its parts
            run_parts(items, ("stats", "gt", "pictures", "gt_pictures", "heat"), "report: thumbnails")
        else:  # statistics of all (to sort), then pictures of the shown ones
            run_parts(items, ("stats", "gt"), "report: reading masks")

        records = []
        for it in items:
            k = keys(it)
            stats = cache.get(it.stem, "stats", k["stats"])
            scored = cache.get(it.stem, "gt", k["gt"]) if k["gt"] is not None else None
            records.append(rec.make_record(it.image.entry, it.stem, it.image.labels, stats, scored))
        if sort == "confidence" and all(r["confidence"] is None for r in records):
            warnings.append("no image has a mean confidence (a run without the CRF): sorted by name; try --sort ignored or area")
        shown = rec.sort_records(records, sort)
        if limit is not None:
            shown = shown[:limit]
            run_parts([by_stem[r["stem"]] for r in shown], ("pictures", "gt_pictures", "heat"), "report: thumbnails")
        for r in shown:  # how the full-size view shows it (a photo found unreadable is left out)
            it = by_stem[r["stem"]]
            pictures = cache.get(it.stem, "pictures", keys(it)["pictures"]) or {}
            r["photo"] = pictures.get("photo")
            r["overlay"] = pictures.get("overlay") or "png"
            heat = cache.get(it.stem, "heat", keys(it)["heat"]) if keys(it)["heat"] is not None else None
            r["heat"] = heat if heat and heat.get("kinds") else None
    finally:
        # Entries of images no longer in the run go, with their pictures.
        for stem in [s for s in cache.entries if s not in by_stem]:
            _remove_pictures(report_dir, stem, cache.entries[stem].get("heat"))
            del cache.entries[stem]
        with contextlib.suppress(OSError):
            cache.save()

    gt_summary = None
    if gt_dir is not None:
        scored = [cache.get(it.stem, "gt", keys(it)["gt"]) if it.gt is not None else None for it in items]
        gt_summary = rec.gt_report([s["hist"] for s in scored if s is not None], run.label_names)

    review = _review_data(run, warnings)
    ctx = PageContext(
        title=f"wsss-label report · {run.out.resolve().name}",
        out_name=run.out.resolve().name,
        label_names=run.label_names,
        colours=colour_list(n_labels, palette()),
        records=records,
        shown=shown,
        sort_key=sort,
        sort_desc=rec.SORT_KEYS[sort],
        photo_base=_photo_base(run.images_root, report_dir),
        mask_base="../masks/",
        settings=run.settings,
        failed=run.failed,
        skipped=run.skipped,
        gt=gt_summary,
        gt_dir=str(gt_dir) if gt_dir is not None else None,
        finished_at=run.data.get("finished_at") if isinstance(run.data.get("finished_at"), str) else None,
        interrupted=bool(run.data.get("interrupted")),
        notes=warnings[:3],
        run_id=hashlib.sha256(str(run.out.resolve()).encode()).hexdigest()[:16],
        review=review,
        redos=[r for r in run.data.get("redos") or [] if isinstance(r, dict)],
    )
    index = report_dir / INDEX
    try:
        write_bytes(index, render_page(ctx).encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write {index}: {exc.strerror or exc}") from None
    return BuildResult(
        index=index,
        n_images=len(records),
        n_shown=len(shown),
        computed=computed,
        rendered=len(rendered),
        rendered_stems=rendered,
        records=shown,
        gt=gt_summary,
        warnings=warnings,
        seconds=time.perf_counter() - started,
        images_root=run.images_root,
        image_names=[image.rel for image in run.images],
    )
