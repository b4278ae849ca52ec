"""Image-level labels: a JSON map, a text/CSV list, or a folder of VOC XML annotations.

Keys are paths relative to the image folder (with or without extension). The order of
an image's labels is the order of its CAM channels.
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterable

from clipseg_cli.errors import ConfigError

if TYPE_CHECKING:
    from clipseg_cli.data.classes import ClassSet

LabelMap = dict[str, list[str]]


@dataclass
class LabelIndex:
    """Labels by normalised relative path, with lookup that tolerates a missing extension."""

    labels: LabelMap
    source: str
    _by_stem: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for key in self.labels:
            self._by_stem.setdefault(_strip_ext(key), key)

    def key_for(self, rel: str) -> str | None:
        """The labels key that names image ``rel``, if any."""
        if rel in self.labels:
            return rel
        stem = _strip_ext(rel)
        if stem in self.labels:
            return stem
        return self._by_stem.get(stem)

    def lookup(self, rel: str) -> list[str] | None:
        key = self.key_for(rel)
        return None if key is None else self.labels[key]


def _strip_ext(rel: str) -> str:
    root, ext = posixpath.splitext(rel)
    return root if ext else rel


def normalise_key(raw: str, source: str) -> str:
    """A labels key as a clean relative POSIX path; a path escaping the image folder is an error."""
    text = raw.strip().replace("\\", "/")
    path = PurePosixPath(text)
    if not text or path.is_absolute() or (len(text) > 1 and text[1] == ":"):
        raise ConfigError(f"{source}: image path {raw!r} must be relative to the image folder")
    clean = posixpath.normpath(text)
    if clean == ".." or clean.startswith("../"):
        raise ConfigError(f"{source}: image path {raw!r} escapes the image folder")
    return clean


def _dedupe(labels: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for label in labels:
        key = label.strip().lower()
        if key and key not in seen:
            seen.add(key)
            out.append(label.strip())
    return out


def _add(result: LabelMap, raw_key: str, labels: list[str], source: str, spelled: dict[str, str]) -> None:
    """Add ``labels`` under the normalised ``raw_key``; the same key spelled twice is merged (a
    text file may list an image on several lines), two spellings of one path are an error."""
    key = normalise_key(raw_key, source)
    first = spelled.setdefault(key, raw_key)
    if first != raw_key:
        raise ConfigError(f"{source}: {first!r} and {raw_key!r} name the same image {key!r}; keep one entry")
    merged = result.get(key, []) + labels
    result[key] = _dedupe(merged)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object_pairs_hook: a key given twice is an error (json would keep the last, silently)."""
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


class _DuplicateKey(ValueError):
    pass


def _parse_json(text: str, source: str) -> LabelMap:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ConfigError(f"{source}: image {exc.args[0]!r} is listed twice; keep one entry") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f'{source}: expected a JSON object {{"image path": ["label", ...]}}')
    result: LabelMap = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, str):
            value = [value]
        elif isinstance(value, dict):  # {"labels": [...], "scores": {...}}, as labels.auto.json
            if "labels" not in value:
                raise ConfigError(f'{source}: the entry of {key!r} is an object without "labels"')
            value = value["labels"]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: labels of {key!r} must be a list of class names")
        _add(result, key, value, source, spelled)
    return result


def _parse_lines(text: str, source: str) -> LabelMap:
    result: LabelMap = {}
    spelled: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "," in stripped:
            fields = next(csv.reader(io.StringIO(stripped), skipinitialspace=True))
        else:
            fields = stripped.split()
        fields = [f.strip() for f in fields if f.strip()]
        if number == 1 and fields and fields[0].lower() in {"image", "path", "file", "filename"}:
            continue  # a CSV header
        if not fields:
            continue
        _add(result, fields[0], fields[1:], f"{source}:{number}", spelled)
    return result


def read_labels_file(path: Path) -> LabelIndex:
    """JSON (``{"rel/path.jpg": ["cat"]}``, an entry may also be ``{"labels": ["cat"], ...}``)
    or text/CSV (``rel/path.jpg cat person``)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read labels file {path}: {exc}") from None
    source = str(path)
    looks_json = path.suffix.lower() == ".json" or text.lstrip().startswith("{")
    labels = _parse_json(text, source) if looks_json else _parse_lines(text, source)
    if not labels:
        raise ConfigError(f"{source}: no image labels found")
    return LabelIndex(labels, source)


def read_voc_annotations(folder: Path) -> LabelIndex:
    """Labels from VOC XML files: distinct object names, in order of appearance, keyed by file stem."""
    if not folder.is_dir():
        raise ConfigError(f"annotations folder not found: {folder}")
    result: LabelMap = {}
    spelled: dict[str, str] = {}
    for xml_path in sorted(folder.rglob("*.xml")):
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise ConfigError(f"{xml_path}: not valid XML ({exc})") from None
        names = [(obj.findtext("name") or "").strip() for obj in root.iter("object")]
        filename = (root.findtext("filename") or "").strip() or xml_path.stem
        rel = xml_path.relative_to(folder).parent / Path(filename).stem
        _add(result, rel.as_posix(), [n for n in names if n], str(xml_path), spelled)
    if not result:
        raise ConfigError(f"{folder}: no VOC XML annotations found")
    return LabelIndex(result, str(folder))


def resolve_labels(names: Iterable[str], class_set: ClassSet, image: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Class indices and names of ``names`` (matched as ``class_set`` matches them), each once, in
    order; an unknown name is a ConfigError listing the valid classes."""
    indices: list[int] = []
    for name in names:
        if not class_set.has(name):
            valid = ", ".join(class_set.classes)
            raise ConfigError(f"unknown class {name!r} for image {image}; valid classes: {valid}")
        index = class_set.index(name)
        if index not in indices:
            indices.append(index)
    return tuple(indices), tuple(class_set.classes[i] for i in indices)


# -- labels of training images -------------------------------------------------------------------
ImageLabels = dict[str, list[int]]  # image key -> mask values (1 + class index) it is labelled with


def read_label_source(labels: Path | None, annotations: Path | None) -> LabelIndex:
    """``--labels FILE`` or ``--annotations DIR`` (exactly one), as the main command reads them."""
    if (labels is None) == (annotations is None):
        raise ConfigError("give exactly one of --labels FILE or --annotations DIR")
    return read_labels_file(labels) if labels is not None else read_voc_annotations(annotations)  # type: ignore[arg-type]


def labels_for_images(index: LabelIndex, images: Path, class_names: list[str] | tuple[str, ...]) -> ImageLabels:
    """Mask values (1 + class index) of every image under ``images`` that has labels.

    Images without labels (or with an empty list) are left out; an unknown class name is a
    ConfigError listing the valid ones, as for labelling.
    """
    from clipseg_cli.data.classes import ClassSet
    from clipseg_cli.data.images import list_images

    names = tuple(class_names)
    lookup = ClassSet("labels", names, names, tuple((n,) for n in names), ())
    root = Path(images)
    result: ImageLabels = {}
    for key, path in list_images(root).items():
        rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
        found = index.lookup(rel)
        if not found:
            continue
        indices, _ = resolve_labels(found, lookup, rel)
        result[key] = [1 + i for i in indices]
    return result


def saved_image_labels(saved: object) -> ImageLabels:
    """The ``image_labels`` of a checkpoint as ``{str: [int]}`` (empty when absent)."""
    items = saved.items() if isinstance(saved, dict) else ()
    return {str(k): [int(v) for v in vals] for k, vals in items}
