"""An image list (``--list FILE``): which images of the folder a run does.

One image per line, as a path relative to the image folder with or without its extension
(VOC's ``ImageSets/Segmentation/train.txt`` lists ``2007_000032``); only the first field of a
line counts, blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

from clipseg_cli.data.images import IMAGE_EXTENSIONS
from clipseg_cli.data.labels import normalise_key
from clipseg_cli.errors import ConfigError


def image_stem(rel: str) -> str:
    """``rel`` without an image extension (``a/b.jpg`` -> ``a/b``; ``a/b.v2`` stays as it is)."""
    root, ext = posixpath.splitext(rel)
    return root if ext.lower() in IMAGE_EXTENSIONS else rel


def read_image_list(path: Path) -> list[str]:
    """The listed images as stems (relative POSIX paths without image extension), in file order,
    each once. A missing or unreadable file, a path leaving the folder or an empty list is a
    ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"image list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read image list {path}: {exc}") from None
    stems: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        stems.setdefault(image_stem(normalise_key(fields[0], f"{path}:{number}")))
    if not stems:
        raise ConfigError(f"{path}: the image list is empty")
    return list(stems)
