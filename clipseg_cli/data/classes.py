"""Class sets: names, the prompt text per class, synonyms, background words, CAA's lambda.

Built-in sets (``voc``, ``coco``) and background sets are data files in ``prompts/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from clipseg_cli.errors import ConfigError

BUILTIN_SETS = ("voc", "coco")
DEFAULT_LAMBDA = 0.4


@dataclass(frozen=True)
class ClassSet:
    """Classes in index order (mask value = 1 + index), with what CLIP is prompted with."""

    name: str
    classes: tuple[str, ...]
    prompts: tuple[str, ...]
    synonyms: tuple[tuple[str, ...], ...]
    background: tuple[str, ...]
    lam: float = DEFAULT_LAMBDA
    _lookup: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._lookup.update({_key(c): i for i, c in enumerate(self.classes)})

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, label: str) -> int:
        """Class index of ``label`` (case and surrounding spaces ignored)."""
        try:
            return self._lookup[_key(label)]
        except KeyError:
            raise KeyError(label) from None

    def has(self, label: str) -> bool:
        return _key(label) in self._lookup

    def with_background(self, background: tuple[str, ...]) -> ClassSet:
        return ClassSet(self.name, self.classes, self.prompts, self.synonyms, background, self.lam)


def _key(label: str) -> str:
    return " ".join(label.strip().lower().split())


def _data_text(filename: str) -> str:
    return resources.files("clipseg_cli.prompts").joinpath(filename).read_text(encoding="utf-8")


def _read_word_list(text: str) -> tuple[str, ...]:
    words = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(w for w in words if w)


def builtin_background(name: str) -> tuple[str, ...]:
    return _read_word_list(_data_text(f"background-{name}.txt"))


def _load_builtin(name: str) -> ClassSet:
    data = json.loads(_data_text(f"{name}.json"))
    items = data["classes"]
    return ClassSet(
        name=name,
        classes=tuple(c["name"] for c in items),
        prompts=tuple(c["prompt"] for c in items),
        synonyms=tuple(tuple(c["synonyms"]) for c in items),
        background=builtin_background(data["background"]),
        lam=float(data["lambda"]),
    )


def _parse_class_lines(lines: list[str], source: str) -> tuple[list[str], list[tuple[str, ...]]]:
    names: list[str] = []
    synonyms: list[tuple[str, ...]] = []
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        if not name:
            raise ConfigError(f"{source}:{number}: a class line needs a name before ':'")
        extra = [s.strip() for s in rest.split(",") if s.strip()]
        names.append(name)
        synonyms.append((name, *[s for s in extra if _key(s) != _key(name)]))
    if not names:
        raise ConfigError(f"{source}: no class names found")
    seen: set[str] = set()
    for name in names:
        if _key(name) in seen:
            raise ConfigError(f"{source}: class {name!r} is listed twice")
        seen.add(_key(name))
    return names, synonyms


def _custom_set(name: str, lines: list[str], source: str) -> ClassSet:
    names, synonyms = _parse_class_lines(lines, source)
    words = {_key(s) for group in synonyms for s in group}
    # The VOC background words, less any word that names one of the classes (as COCO drops "keyboard").
    background = tuple(w for w in builtin_background("voc") if _key(w) not in words)
    prompts = tuple(", ".join(group) for group in synonyms)
    return ClassSet(name, tuple(names), prompts, tuple(synonyms), background, DEFAULT_LAMBDA)


def load_class_set(spec: str) -> ClassSet:
    """``voc`` | ``coco`` | a file (one class per line, ``name: synonym, synonym``) | ``"a,b,c"``."""
    if spec.lower() in BUILTIN_SETS:
        return _load_builtin(spec.lower())
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read class file {path}: {exc}") from None
        return _custom_set(path.stem, lines, str(path))
    if path.suffix.lower() in {".txt", ".csv", ".names"} or "/" in spec:
        raise ConfigError(f"class file not found: {spec}")
    return _custom_set("custom", [s for s in spec.split(",")], "--classes")


def load_background(spec: str | None, class_set: ClassSet) -> tuple[str, ...]:
    """``voc`` | ``coco`` | ``none`` | a file with one word per line; None = the class set's own."""
    if spec is None:
        return class_set.background
    if spec.lower() in BUILTIN_SETS:
        return builtin_background(spec.lower())
    if spec.lower() == "none":
        return ()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"--background must be voc, coco, none or a file; {spec} is none of these")
    try:
        return _read_word_list(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read background file {path}: {exc}") from None
