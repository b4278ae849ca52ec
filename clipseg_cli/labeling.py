"""The labelling job: which images to do, doing them, writing outputs and ``run.json``.

Every output is written atomically, the mask last, so an existing mask means the image
is finished: a rerun (without --overwrite) skips it and so resumes an interrupted run.
"""

from __future__ import annotations

import datetime as _dt
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from clipseg_cli.cam.pipeline import CLIPESPredictor, LabelResult
from clipseg_cli.data.classes import ClassSet
from clipseg_cli.data.image_list import image_stem
from clipseg_cli.data.images import IMAGE_EXTENSIONS, find_images, load_rgb, special_file_reason
from clipseg_cli.data.labels import LabelIndex, resolve_labels
from clipseg_cli.data.limits import DEFAULT_MAX_PIXELS
from clipseg_cli.errors import ConfigError, ImageError, OutputWriteError, WsssError
from clipseg_cli.io.atomic import final_name, is_storage_failure, remove_stale_parts, write_json, write_npz
from clipseg_cli.io.masks import IGNORE_LABEL, save_mask
from clipseg_cli.io.visualize import save_visualization
from clipseg_cli.run_settings import Decisive, read_record, rerun_conflict

RUN_FILE = "run.json"
OUTPUT_FOLDERS = ("masks", "cams", "vis", "report")  # under --out; "report" is the gallery's

# The settings of run.json that decide the masks: a rerun into the same --out must have the same
# (see run_settings). Not here: paths, device, workers, backend, --save-cams, --visualize, --report.
LABEL_DECISIVE: tuple[Decisive, ...] = (
    Decisive("class_names"),
    Decisive("class_prompts"),
    Decisive("class_synonyms"),
    Decisive("background"),
    Decisive("templates"),
    Decisive("synonyms"),
    Decisive("lambda"),
    Decisive("mu"),
    Decisive("crf"),
    # --crf-backend and --precision change the numbers; every run before they existed had these.
    Decisive("crf_backend", "pydensecrf"),
    Decisive("precision", "fp32"),
    Decisive("max_side"),
    Decisive("weights.sha256"),
    # Recorded only by --labels auto runs: compared when both runs chose their labels.
    Decisive("label_threshold"),
)


@dataclass(frozen=True)
class WorkItem:
    rel: str  # path relative to the image folder, POSIX
    labels: tuple[int, ...]  # class indices in CAM channel order
    names: tuple[str, ...]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.rel)[0]


@dataclass
class Plan:
    todo: list[WorkItem] = field(default_factory=list)
    done: list[WorkItem] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    fresh: bool = False  # --overwrite: every image is redone, existing outputs are not kept
    stale: list[WorkItem] = field(default_factory=list)  # in todo, with a mask that must not be kept


@dataclass(frozen=True)
class OutputLayout:
    root: Path

    def mask(self, item: WorkItem) -> Path:
        return self.root / "masks" / f"{item.stem}.png"

    def cams(self, item: WorkItem) -> Path:
        return self.root / "cams" / f"{item.stem}.npz"

    def visual(self, item: WorkItem) -> Path:
        return self.root / "vis" / f"{item.stem}.png"

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def folders(self) -> list[Path]:
        """The folder and its subfolders that hold outputs (never read as input images)."""
        return [self.root, *(self.root / name for name in OUTPUT_FOLDERS)]


def input_images(images_root: Path, layout: OutputLayout, only: Sequence[str] | None = None) -> list[str]:
    """The images under ``images_root`` a run into ``layout`` reads (its output folders left out),
    sorted; with ``only`` (``--list``: stems) just the listed ones."""
    found = find_images(images_root, exclude=layout.folders())
    if only is None:
        return found
    listed = set(only)
    return [rel for rel in found if image_stem(rel) in listed]


def make_plan(
    images_root: Path,
    labels: LabelIndex,
    class_set: ClassSet,
    layout: OutputLayout,
    overwrite: bool,
    need_cams: bool,
    only: Sequence[str] | None = None,
) -> Plan:
    """Pair images with labels. Unknown class names are a ConfigError (nothing is done).

    ``only`` (``--list``): the stems (relative paths without image extension) of the images to
    do; the folder's other images, and labels of unlisted images, are left alone, and a listed
    image that is not in the folder is a failure.
    """
    plan = Plan(fresh=overwrite)
    found = input_images(images_root, layout, only)
    listed = None if only is None else set(only)
    used_keys: set[str] = set()
    outputs: dict[str, str] = {}
    for rel in found:
        key = labels.key_for(rel)
        if key is None:
            plan.skipped.append({"image": rel, "reason": "no labels"})
            continue
        used_keys.add(key)
        indices, names = resolve_labels(labels.labels[key], class_set, rel)
        if not indices:
            plan.skipped.append({"image": rel, "reason": "empty label list"})
            continue
        special = special_file_reason(images_root / rel)
        if special is not None:  # a named pipe would block whoever opens it
            plan.failed.append({"image": rel, "reason": special})
            continue
        item = WorkItem(rel, indices, names)
        if item.stem in outputs:
            plan.failed.append({"image": rel, "reason": f"same output name as {outputs[item.stem]}"})
            continue
        outputs[item.stem] = rel
        finished = layout.mask(item).is_file() and (not need_cams or layout.cams(item).is_file())
        (plan.done if finished and not overwrite else plan.todo).append(item)
    by_stem = {posixpath.splitext(rel)[0]: rel for rel in reversed(found)}
    for key, names in labels.labels.items():
        if key in used_keys or (listed is not None and image_stem(key) not in listed):
            continue
        twin = by_stem.get(key)  # "x" unused: the image x.jpg took its labels from "x.jpg"
        if twin is not None and posixpath.splitext(key)[1] == "":
            raise ConfigError(f"{labels.source}: {key!r} and {labels.key_for(twin)!r} both name image {twin}; keep one entry")
        resolve_labels(names, class_set, key)
        path = images_root / key
        if path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
            reason = f"not a supported image type ({path.suffix or 'no extension'})"
        else:
            reason = "listed in labels but the file is missing"
        plan.failed.append({"image": key, "reason": reason})
    if listed is not None:
        present = {image_stem(rel) for rel in found} | {image_stem(e["image"]) for e in plan.failed}
        missing = [stem for stem in only or () if stem not in present]
        plan.failed += [{"image": stem, "reason": "in --list but no such image in the folder"} for stem in missing]
    return plan


def check_rerun(layout: OutputLayout, plan: Plan, settings: dict[str, Any]) -> list[WorkItem]:
    """Before a rerun into ``layout`` resumes: ConfigError when its finished masks were made
    with other decisive settings (:data:`LABEL_DECISIVE`); finished images whose labels have
    changed since are moved from ``plan.done`` to ``plan.todo`` (redone) and returned."""
    if plan.fresh or not plan.done:
        return []
    record = read_record(layout.run_file)
    if record is None:  # masks without a readable run.json: nothing to compare with
        return []
    old = record.get("settings")
    message = rerun_conflict(layout.root, old if isinstance(old, dict) else {}, settings, LABEL_DECISIVE)
    if message:
        raise ConfigError(message)
    recorded = {rel: entry.get("labels") for rel, entry in recorded_images(record).items()}
    relabelled = [
        item for item in plan.done
        if isinstance(recorded.get(item.rel), list) and recorded[item.rel] != list(item.names)
    ]  # fmt: skip
    if relabelled:
        moved = {item.rel for item in relabelled}
        plan.done = [item for item in plan.done if item.rel not in moved]
        plan.todo += relabelled
        plan.stale += relabelled
    return relabelled


# Exceptions that fail one image and let the run go on. ``OutputWriteError`` (the output
# folder takes no more files) stops the run; anything else is a bug and ends it.
IMAGE_FAILURES: tuple[type[BaseException], ...] = (ImageError, RuntimeError, ValueError, MemoryError, OSError)


def failure_reason(exc: BaseException) -> str:
    """The one-line ``reason`` of run.json's ``failed`` entry for an image that raised ``exc``."""
    if isinstance(exc, (ImageError, WsssError)):
        return str(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}"


@dataclass(frozen=True)
class Outcome:
    """What became of one image of the plan: its stage seconds and figures when done, else why it failed."""

    item: WorkItem
    seconds: dict[str, float] | None = None
    error: str | None = None
    figures: dict[str, float | None] | None = None

    @classmethod
    def failure(cls, item: WorkItem, exc: BaseException) -> Outcome:
        return cls(item, error=failure_reason(exc))


def image_figures(result: LabelResult) -> dict[str, float | None]:
    """Per-image figures for run.json (what the review gallery sorts by, worst first):
    ``confidence``, the mean CRF confidence (None without the CRF), and ``ignored``, the share
    of pixels labelled 255."""
    confidence = None
    if result.confidence is not None and result.confidence.size:
        confidence = round(float(result.confidence.mean(dtype=np.float64)), 6)
    ignored = float(np.count_nonzero(result.mask == IGNORE_LABEL)) / max(1, result.mask.size)
    return {"confidence": confidence, "ignored": round(ignored, 6)}


def image_entry(item: WorkItem, seconds: dict[str, float] | None, figures: dict[str, float | None] | None = None) -> dict[str, Any]:
    """run.json's entry for a labelled image (``seconds`` and ``figures`` None: done by an earlier
    run that did not record them)."""
    timing = None if seconds is None else {k: round(v, 4) for k, v in seconds.items()}
    entry: dict[str, Any] = {"image": item.rel, "labels": list(item.names), "seconds": timing}
    entry.update(figures or {"confidence": None, "ignored": None})
    return entry


def write_image_outputs(
    layout: OutputLayout,
    item: WorkItem,
    image: np.ndarray,
    result: LabelResult,
    save_cams: bool,
    visualize: bool,
) -> None:
    """Write the files of one finished image, each atomically, the mask last.

    The one writer for every backend (serial, worker processes, Ray tasks), so their files
    are the same; rewriting an image (a retried Ray task) replaces each file whole. A full
    disk or a read-only file system raises ``OutputWriteError`` (the run stops), never a
    failure of this one image.
    """
    writing: list[Path] = []  # the file being written, for the message
    try:
        if save_cams:
            arrays: dict[str, np.ndarray] = {
                "labels": np.asarray(item.labels, dtype=np.int64),
                "cam": result.cam.astype(np.float32, copy=False),
                "refined": result.refined.astype(np.float32, copy=False),
            }
            if result.confidence is not None:
                arrays["confidence"] = result.confidence.astype(np.float16)
            writing.append(layout.cams(item))
            write_npz(layout.cams(item), **arrays)
        if visualize:
            writing.append(layout.visual(item))
            save_visualization(layout.visual(item), image, result.mask, result.refined, item.names, item.labels)
        writing.append(layout.mask(item))
        save_mask(layout.mask(item), result.mask)
    except OSError as exc:
        if is_storage_failure(exc):
            raise OutputWriteError(storage_message(layout.root, exc, writing[-1] if writing else None)) from None
        raise


def storage_message(root: Path, exc: OSError, dest: Path | None = None) -> str:
    """The one line for a write into ``root`` that failed with a full disk, quota or read-only FS."""
    name = final_name(exc.filename) if exc.filename else dest
    where = f" ({name})" if name else ""
    return f"cannot write to {root}: {exc.strerror or exc}{where}"


# An engine labels the given images and calls ``record`` once per image, in any order and
# from the calling thread. It may raise KeyboardInterrupt after recording what finished.
Record = Callable[[Outcome], None]
Engine = Callable[[Sequence[WorkItem], Record], None]


@dataclass
class LabelJob:
    images_root: Path
    layout: OutputLayout
    predictor: CLIPESPredictor | None  # None when an engine brings its own models (Ray)
    save_cams: bool = False
    visualize: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    # A redo of marked images (clipseg_cli.relabel): its run.json record; the entries it makes carry "redo": n.
    redo: dict[str, Any] | None = None
    max_pixels: int | None = DEFAULT_MAX_PIXELS  # larger images fail before they are decoded
    _redos: list[dict[str, Any]] = field(default_factory=list, init=False, repr=False)  # run.json's earlier redo records

    def process(self, item: WorkItem) -> LabelResult:
        """Label one image and write its files (mask last)."""
        if self.predictor is None:  # a programming error, not one image's failure
            raise TypeError("this LabelJob has no predictor: pass an engine to run()")
        image = load_rgb(self.images_root / item.rel, self.max_pixels)
        result = self.predictor.predict(image, item.labels)
        write_image_outputs(self.layout, item, image, result, self.save_cams, self.visualize)
        return result

    def attempt(self, item: WorkItem) -> Outcome:
        """``process`` with the failures of one image caught and described."""
        try:
            result = self.process(item)
        except IMAGE_FAILURES as exc:
            return Outcome.failure(item, exc)
        return Outcome(item, seconds=result.seconds, figures=image_figures(result))

    def run_serial(self, items: Sequence[WorkItem], record: Record) -> None:
        """The in-process engine: one image after the other (until the output folder fails)."""
        for item in items:
            try:
                outcome = self.attempt(item)
            except OutputWriteError as exc:
                record(Outcome.failure(item, exc))
                raise
            record(outcome)

    def run(
        self,
        plan: Plan,
        on_progress: Callable[[WorkItem], None] | None = None,
        engine: Engine | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> dict[str, Any]:
        """Process the plan's images; returns the run summary (also written as run.json).

        ``engine`` does the images (default: ``run_serial``); whatever it is, the entries,
        failures and run.json are made here, so every backend records the same things.
        ``on_outcome`` hears of each image as it ends (done or failed), ``on_progress`` of its item.

        run.json is written first with this run's settings: a run killed before its end still
        leaves a record that matches its masks. With ``plan.fresh`` (--overwrite) the masks of
        the plan's images (else those of ``plan.stale``) are removed first, so that an interrupted
        overwrite resumes by redoing them rather than by keeping masks made with other settings.
        """
        remove_stale_parts(self.layout.root)
        record = read_record(self.layout.run_file)
        previous = recorded_images(record)
        self._redos = [] if plan.fresh else _previous_redos(record)
        entries = {item.rel: previous.get(item.rel) or image_entry(item, None) for item in plan.done}
        run_failed: dict[str, str] = {}
        processed = 0
        started = time.time()
        interrupted = False
        stopped: str | None = None
        self._write_summary(self.summary(plan, entries, list(plan.failed), 0, 0.0, None), None)
        for item in plan.todo if plan.fresh else plan.stale:
            self.layout.mask(item).unlink(missing_ok=True)

        def record(outcome: Outcome) -> None:
            nonlocal processed
            item = outcome.item
            if outcome.error is None:
                processed += 1
                entries[item.rel] = image_entry(item, outcome.seconds, outcome.figures)
                if self.redo is not None:
                    entries[item.rel]["redo"] = self.redo["n"]
            else:
                run_failed[item.rel] = outcome.error
            if on_outcome:
                on_outcome(outcome)
            if on_progress:
                on_progress(item)

        try:
            (engine or self.run_serial)(plan.todo, record)
        except KeyboardInterrupt:
            interrupted = True
            raise
        except OutputWriteError as exc:
            stopped = str(exc)
            raise
        finally:
            # Failures in plan order, whatever order an engine finished the images in.
            failed = list(plan.failed)
            failed += [{"image": i.rel, "reason": run_failed[i.rel]} for i in plan.todo if i.rel in run_failed]
            summary = self.summary(plan, entries, failed, processed, time.time() - started, interrupted)
            if stopped is not None:
                summary["state"], summary["stopped"] = "stopped", stopped
            self._write_summary(summary, stopped)
        return summary

    def _write_summary(self, summary: dict[str, Any], stopped: str | None) -> None:
        """run.json; a full disk here is one line too (naming the first failure, if any)."""
        try:
            write_json(self.layout.run_file, summary)
        except OSError as exc:
            first = f"{stopped}; " if stopped else ""
            raise OutputWriteError(f"{first}{storage_message(self.layout.root, exc)}: run.json not updated") from None

    def summary(
        self,
        plan: Plan,
        entries: dict[str, dict[str, Any]],
        failed: list[dict[str, str]],
        processed: int,
        seconds: float,
        interrupted: bool | None,
    ) -> dict[str, Any]:
        """run.json; ``interrupted`` None: the run is still going (the record written at its start)."""
        images = [entries[k] for k in sorted(entries)]
        return {
            "tool": "wsss-label",
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "state": "running" if interrupted is None else "interrupted" if interrupted else "finished",
            "interrupted": bool(interrupted),
            "settings": self.settings,
            "counts": {
                "labelled": len(images),
                "processed_this_run": processed,
                "already_done": len(plan.done),
                "skipped": len(plan.skipped),
                "failed": len(failed),
            },
            "seconds": round(seconds, 3),
            "images": images,
            "skipped": plan.skipped,
            "failed": failed,
            **self._redo_records(images),
        }

    def _redo_records(self, images: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"redos": [...]}``: the redo records some entry still refers to, with their image
        counts (none: no key, as run.json had before redos existed)."""
        counts: dict[int, int] = {}
        for entry in images:
            if isinstance(entry.get("redo"), int):
                counts[entry["redo"]] = counts.get(entry["redo"], 0) + 1
        records = [*self._redos, *([self.redo] if self.redo is not None else [])]
        kept = [{**r, "images": counts[r["n"]]} for r in records if r.get("n") in counts]
        return {"redos": kept} if kept else {}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else "no detail"


def recorded_images(record: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The image entries of a run.json record by image path ({} when it has none or they are malformed)."""
    images = record.get("images") if record is not None else None
    if not isinstance(images, list):
        return {}
    return {e["image"]: e for e in images if isinstance(e, dict) and isinstance(e.get("image"), str)}


def _previous_redos(record: dict[str, Any] | None) -> list[dict[str, Any]]:
    redos = record.get("redos") if record is not None else None
    return [r for r in redos if isinstance(r, dict) and isinstance(r.get("n"), int)] if isinstance(redos, list) else []
