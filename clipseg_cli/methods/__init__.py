"""Every learned method, registered in one place.

A method is a :class:`clipseg_cli.methods.base.LearnedMethod` subclass in its own module of this
package, decorated with :func:`register`. It declares its name, family (``segmenter`` trained by
``wsss-label retrain``, ``refiner`` by ``wsss-label refine train --method NAME``, ``cam`` by
``wsss-label train-cam NAME``), checkpoint ``kind``, a config dataclass whose fields carry their
defaults, help and limits, the training hooks the engine (:mod:`clipseg_cli.training`) runs, and
a predictor loader for ``wsss-label predict``. The command lines are generated from the registry:
adding a method is one module (plus its test); see docs/adding-a-method.md.

Modules are imported on the first look-up (every module of this package, so a new file is found
without being listed anywhere).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from clipseg_cli.errors import ConfigError

if TYPE_CHECKING:
    from clipseg_cli.methods.base import LearnedMethod

METHODS: dict[str, type[LearnedMethod]] = {}
_discovered = False


def register(cls: type[LearnedMethod]) -> type[LearnedMethod]:
    """Class decorator: make ``cls`` known under ``cls.name`` (names and kinds must be unique)."""
    for other in METHODS.values():
        if other is not cls and (other.name == cls.name or other.kind == cls.kind):
            raise ValueError(f"method {cls.name!r} / kind {cls.kind!r} is registered twice")
    METHODS[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def all_methods(family: str | None = None) -> dict[str, type[LearnedMethod]]:
    """Registered methods by name (of one family when given), in name order."""
    _discover()
    return {n: m for n, m in sorted(METHODS.items()) if family is None or m.family == family}


def get_method(name: str, family: str | None = None, option: str = "--method") -> type[LearnedMethod]:
    """The method called ``name`` (of ``family``); ConfigError listing the choices otherwise."""
    known = all_methods(family)
    if name not in known:
        raise ConfigError(f"unknown {option} {name!r}; available: {', '.join(known)}")
    return known[name]


def method_for_kind(kind: str, what: str = "checkpoint") -> type[LearnedMethod]:
    """The method whose checkpoints have ``kind``; ConfigError listing the known kinds otherwise."""
    _discover()
    for method in METHODS.values():
        if method.kind == kind:
            return method
    kinds = ", ".join(sorted(m.kind for m in METHODS.values()))
    raise ConfigError(f"{what}: kind {kind!r} cannot be predicted with; known kinds: {kinds}")
