"""Class names for eval from ``--classes`` (``voc``, ``coco``, a class file or ``"a,b,c"``).

Only the names and their order matter here: label ``1 + i`` is class ``i``, label 0 is
background. Parsing is the shared :func:`clipseg_cli.data.classes.load_class_set`.
"""

from __future__ import annotations

from clipseg_cli.data.classes import load_class_set
from clipseg_cli.errors import ConfigError
from clipseg_cli.io.masks import IGNORE_LABEL

BACKGROUND = "background"


def resolve_class_names(spec: str) -> list[str]:
    """The foreground class names in label order; ``background`` may not be one of them."""
    names = list(load_class_set(spec.strip()).classes)
    if any(n.strip().lower() == BACKGROUND for n in names):
        raise ConfigError("--classes: 'background' is implicit (label 0); remove it from the class list")
    if len(names) >= IGNORE_LABEL:
        raise ConfigError(f"--classes: {len(names)} classes do not fit in 8-bit label maps (at most 254)")
    return names
