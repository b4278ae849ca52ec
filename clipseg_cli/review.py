"""review.json: the marks a reviewer gave a run's pseudo masks in the gallery, and what acts on them.

A run folder ``OUT`` (masks in ``OUT/masks``) may hold ``OUT/review.json``, written by the
gallery (``wsss-label report OUT --serve``, or its export button)::

    {"tool": "wsss-label", "kind": "review", "version": 1, "updated_at": "2026-...",
     "marks": {"pets/c1.jpg": {"mark": "rejected", "note": "tail missing", "at": "2026-..."}}}

Keys of ``marks`` are image paths as ``run.json`` lists them (relative to the image folder);
a mark is ``accepted``, ``rejected`` or ``fix`` (needs another try), with an optional note and
the time it was given. Unmarked images are absent. Readers: the gallery, the label command's
``--redo`` and the training commands' ``--review`` (rejected images are left out).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipseg_cli.errors import ConfigError
from clipseg_cli.io.atomic import write_json

REVIEW_FILE = "review.json"
MARKS = ("accepted", "rejected", "fix")
VERSION = 1
MAX_BYTES = 8 << 20  # a review.json larger than this is refused (about 60,000 marks with notes)
MAX_NOTE = 2000  # characters of one note
SHOW = 3  # names quoted in a message


class ReviewError(ConfigError):
    """A review.json that cannot be used: one line naming the problem (exit 2)."""


@dataclass(frozen=True)
class Mark:
    mark: str  # one of MARKS
    note: str = ""
    at: str = ""  # ISO time the mark was given ("" when unknown)

    def to_json(self) -> dict[str, str]:
        out = {"mark": self.mark}
        if self.note:
            out["note"] = self.note
        if self.at:
            out["at"] = self.at
        return out


@dataclass
class Review:
    marks: dict[str, Mark] = field(default_factory=dict)  # image path -> its mark
    updated_at: str = ""
    path: Path | None = None  # the file it was read from

    def images(self, *marks: str) -> list[str]:
        """The image paths marked with any of ``marks``, sorted."""
        return sorted(image for image, m in self.marks.items() if m.mark in marks)

    def stems(self, *marks: str) -> set[str]:
        """The same as output names: image paths without extension (``masks/<stem>.png``)."""
        return {posixpath.splitext(image)[0] for image in self.images(*marks)}

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(MARKS, 0)
        for m in self.marks.values():
            out[m.mark] += 1
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": "wsss-label",
            "kind": "review",
            "version": VERSION,
            "updated_at": self.updated_at or now(),
            "marks": {image: self.marks[image].to_json() for image in sorted(self.marks)},
        }


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _bad_image_path(image: str) -> bool:
    return not image or image.startswith("/") or "\\" in image or ".." in image.split("/") or "\x00" in image


def parse_review(data: Any, where: str = REVIEW_FILE, known: Iterable[str] | None = None) -> Review:
    """Check a decoded review.json and return its marks; :class:`ReviewError` (one line) if
    it is not one. ``known``: the run's image paths; a mark of any other image is refused."""
    if not isinstance(data, Mapping):
        raise ReviewError(f"{where} is not a review file (a JSON object is expected)")
    if data.get("kind") != "review":
        raise ReviewError(f'{where} is not a review file of wsss-label (no "kind": "review")')
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ReviewError(f'{where}: "version" must be a positive integer')
    if version > VERSION:
        raise ReviewError(f"{where} is review format version {version}; this wsss-label reads version {VERSION}")
    marks = data.get("marks")
    if not isinstance(marks, Mapping):
        raise ReviewError(f'{where}: "marks" must be an object of image path -> mark')
    known_set = set(known) if known is not None else None
    out: dict[str, Mark] = {}
    unknown: list[str] = []
    for image, value in marks.items():
        if not isinstance(image, str) or _bad_image_path(image):
            raise ReviewError(f"{where}: image path {str(image)[:80]!r} is not a path inside the image folder")
        if not isinstance(value, Mapping) or value.get("mark") not in MARKS:
            raise ReviewError(f'{where}: image {image}: "mark" must be one of {", ".join(MARKS)}')
        note, at = value.get("note", ""), value.get("at", "")
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise ReviewError(f'{where}: image {image}: "note" must be text of at most {MAX_NOTE} characters')
        if not isinstance(at, str) or len(at) > 64:
            raise ReviewError(f'{where}: image {image}: "at" must be an ISO time')
        if known_set is not None and image not in known_set:
            unknown.append(image)
            continue
        out[image] = Mark(str(value["mark"]), note, at)
    if unknown:
        shown = ", ".join(unknown[:SHOW]) + (", ..." if len(unknown) > SHOW else "")
        raise ReviewError(f"{where}: {len(unknown)} marked image(s) are not images of the run: {shown}")
    updated = data.get("updated_at")
    return Review(out, updated if isinstance(updated, str) else "")


def load_review(path: str | os.PathLike[str], known: Iterable[str] | None = None) -> Review:
    """Read and check a review.json (see :func:`parse_review`)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ReviewError(f"{path} is larger than {MAX_BYTES >> 20} MiB: not a review file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReviewError(f"review file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReviewError(f"{path} is not valid JSON: {exc}") from None
    review = parse_review(data, str(path), known)
    review.path = path
    return review


def save_review(path: str | os.PathLike[str], review: Review) -> None:
    """Write ``review`` atomically (a reader never sees half a file)."""
    write_json(path, review.to_json())


def beside_masks(masks: str | os.PathLike[str]) -> Path:
    """Where a run keeps its review: ``MASKS/../review.json`` (``OUT/review.json`` of ``OUT/masks``)."""
    return Path(masks).resolve().parent / REVIEW_FILE


def find_review(masks: str | os.PathLike[str] | None, given: str | os.PathLike[str] | None) -> Path | None:
    """The review file a command uses: ``given`` (must exist), else ``MASKS/../review.json``
    when it exists (``masks``: the folder of the mask files; None: no default), else None."""
    if given is not None:
        if not Path(given).is_file():
            raise ReviewError(f"--review {given}: no such file")
        return Path(given)
    if masks is None:
        return None
    default = beside_masks(masks)
    return default if default.is_file() else None
