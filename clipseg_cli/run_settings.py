"""The settings that decide a run's outputs, and the check that a rerun into the same folder
does not mix two runs.

Each resuming command declares its decisive settings once, as a tuple of :class:`Decisive`
(``labeling.LABEL_DECISIVE``, ``segmentation.predict.PREDICT_DECISIVE``, ...). A rerun into a
folder that already holds outputs compares them with the record the earlier run left
(``run.json``, ``predict.json``) before any model is loaded; :func:`rerun_conflict` says what
differs. A record written before a setting existed lacks its key: it then counts as the
setting's ``default`` (the value every run had before the setting was added), or, without a
default, as unknown and is not compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

_MISSING: Any = object()


@dataclass(frozen=True)
class Decisive:
    """One setting that decides the outputs: ``key`` is a path into the settings (``a.b`` for
    nested dicts); ``default`` is assumed when an older record lacks it (absent: not compared)."""

    key: str
    default: Any = _MISSING


def lookup(settings: Mapping[str, Any], key: str) -> Any:
    """The value at ``key`` (``a.b`` for nested dicts), or the module's missing marker."""
    value: Any = settings
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _normalise(value: Any) -> Any:
    """JSON's view of a value (tuples are lists), so a fresh value compares equal to a stored one."""
    return json.loads(json.dumps(value)) if value is not _MISSING else value


def differences(old: Mapping[str, Any], new: Mapping[str, Any], decisive: Sequence[Decisive]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for each decisive setting that differs."""
    out = []
    for setting in decisive:
        before, after = lookup(old, setting.key), lookup(new, setting.key)
        if before is _MISSING:
            before = setting.default
        if after is _MISSING:
            after = setting.default
        if before is _MISSING or after is _MISSING:
            continue  # unknown on one side: nothing to compare
        before, after = _normalise(before), _normalise(after)
        if before != after:
            out.append((setting.key, before, after))
    return out


def short(value: Any, limit: int = 60) -> str:
    """A value as it reads in a one-line message: SHA-256 digests cut to 12 digits, long text cut."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(diffs: Sequence[tuple[str, Any, Any]]) -> str:
    """``mu 0.95 -> 0.5, templates ['a'] -> ['b']``."""
    return ", ".join(f"{key} {short(before)} -> {short(after)}" for key, before, after in diffs)


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record of an earlier run (run.json, predict.json); None if absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def rerun_conflict(
    out: Path, old: Mapping[str, Any] | None, new: Mapping[str, Any], decisive: Sequence[Decisive], what: str = "image"
) -> str | None:
    """The one-line message for a rerun into ``out`` with other decisive settings, or None.

    ``old``: the settings the earlier run recorded (None: no record, nothing to compare).
    """
    if old is None:
        return None
    diffs = differences(old, new, decisive)
    if not diffs:
        return None
    return f"{out} was made with other settings ({describe(diffs)}): use --overwrite to redo every {what}, or another --out"
