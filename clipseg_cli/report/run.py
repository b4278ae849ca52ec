"""Reading a run folder of the main command: run.json, masks/, cams/ and where the photos are."""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipseg_cli.errors import ConfigError

RUN_FILE = "run.json"
MASKS = "masks"
CAMS = "cams"
SHOW_MISSING = 5


@dataclass(frozen=True)
class RunImage:
    """One labelled image of the run: its run.json entry and the files that belong to it."""

    rel: str  # path relative to the image folder, as in run.json
    stem: str  # rel without extension: the name of its outputs
    labels: tuple[int, ...]  # mask values (1 + class index) of its image-level labels
    entry: dict[str, Any]
    mask: Path
    cams: Path
    photo: Path | None  # None when the image folder is unknown


@dataclass
class RunFolder:
    out: Path
    data: dict[str, Any]
    class_names: list[str]  # foreground classes; mask value 1 + i is class_names[i]
    images_root: Path | None
    images: list[RunImage] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        """Names of mask values 0..n-1: background first."""
        return ["background", *self.class_names]

    @property
    def settings(self) -> dict[str, Any]:
        settings = self.data.get("settings")
        return settings if isinstance(settings, dict) else {}

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [f for f in self.data.get("failed") or [] if isinstance(f, dict)]

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return [s for s in self.data.get("skipped") or [] if isinstance(s, dict)]


def _read_run_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"{path} is not a run.json of wsss-label (no 'images' list)")
    return data


def _class_names(data: dict[str, Any], path: Path) -> list[str]:
    names = (data.get("settings") or {}).get("class_names") if isinstance(data.get("settings"), dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path} has no settings.class_names list: not a run.json of wsss-label")
    return names


def resolve_images_root(settings: dict[str, Any], out: Path, override: Path | None) -> Path | None:
    """The image folder of the run, the same from any working folder: ``override``, else the
    absolute folder run.json records (settings.images_root), else its path relative to the run
    folder (settings.images_from_run: the run folder and the photos were moved together).
    A run.json older than those keys: settings.images, absolute or relative to the current
    folder or to OUT's parent. None if no candidate exists."""
    if override is not None:
        if not override.is_dir():
            raise ConfigError(f"--images {override} is not a folder")
        return override.resolve()
    candidates: list[Path] = []
    absolute = settings.get("images_root")
    if isinstance(absolute, str) and absolute:
        candidates.append(Path(absolute))
    relative = settings.get("images_from_run")
    if isinstance(relative, str) and relative:
        candidates.append(out.resolve() / relative)
    recorded = settings.get("images")
    if not candidates and isinstance(recorded, str) and recorded:
        path = Path(recorded)
        candidates += [path] if path.is_absolute() else [Path.cwd() / path, out.resolve().parent / path]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def load_run(out: Path, images: Path | None = None) -> RunFolder:
    """Read and check OUT; any problem is a ConfigError with one line that names it."""
    out = Path(out)
    if not out.exists():
        raise ConfigError(f"{out} does not exist")
    if not out.is_dir():
        raise ConfigError(f"{out} is not a folder")
    run_file = out / RUN_FILE
    if not run_file.is_file():
        raise ConfigError(f"{out} has no {RUN_FILE}: give the --out folder of a `wsss-label IMAGES --labels ... --out OUT` run")
    masks = out / MASKS
    if not masks.is_dir():
        raise ConfigError(f"{out} has no {MASKS}/ folder: give the --out folder of a finished wsss-label run")
    data = _read_run_json(run_file)
    class_names = _class_names(data, run_file)
    lookup: dict[str, int] = {}
    for i, name in enumerate(class_names):
        lookup.setdefault(name, i + 1)
        lookup.setdefault(name.strip().lower(), i + 1)
    root = resolve_images_root(data.get("settings") or {}, out, images)
    run = RunFolder(out=out, data=data, class_names=class_names, images_root=root)
    missing: list[str] = []
    seen: set[str] = set()
    for entry in data["images"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise ConfigError(f"{run_file}: an 'images' entry without an 'image' path: {str(entry)[:80]}")
        rel = entry["image"]
        if rel in seen:
            continue
        seen.add(rel)
        stem = posixpath.splitext(rel)[0]
        if not stem or stem.startswith("/") or ".." in stem.split("/"):
            raise ConfigError(f"{run_file}: image path {rel!r} leaves the image folder")
        labels: list[int] = []
        for name in entry.get("labels") or []:
            value = lookup.get(name) if isinstance(name, str) else None
            if value is None and isinstance(name, str):
                value = lookup.get(name.strip().lower())
            if value is None:
                raise ConfigError(f"{run_file}: image {rel}: label {name!r} is not one of settings.class_names")
            if value not in labels:
                labels.append(value)
        mask = masks / f"{stem}.png"
        if not os.path.isfile(mask):
            missing.append(f"{MASKS}/{stem}.png")
            continue
        photo = root / rel if root is not None else None
        run.images.append(RunImage(rel, stem, tuple(labels), entry, mask, out / CAMS / f"{stem}.npz", photo))
    if missing:
        shown = ", ".join(missing[:SHOW_MISSING]) + (", ..." if len(missing) > SHOW_MISSING else "")
        raise ConfigError(f"{len(missing)} image(s) listed in {run_file} have no mask in {out}: {shown}")
    if not run.images:
        raise ConfigError(f"{run_file} lists no labelled images: nothing to review")
    return run
