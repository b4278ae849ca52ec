"""The build cache that makes rebuilding a report incremental.

``report/.build-cache.json`` keeps, per image, the statistics and the key they were computed
from, and the key its pictures were rendered from. A key is made of the source files'
modification time (ns) and size, so a rebuild only reads and renders images whose mask,
photo, CAMs or GT changed (or whose pictures are gone).
"""

from __future__ import annotations

import json
import os
from typing import Any

from clipseg_cli.io.atomic import write_bytes

CACHE_FILE = ".build-cache.json"
FORMAT = 1
STATS_VERSION = 1  # bump when the statistics change
RENDER_VERSION = 1  # bump when the pictures change
GT_RENDER_VERSION = 2  # 2: the error map against the GT (overlays-err/)
HEAT_VERSION = 1

Sig = list[int] | None


def file_sig(path: str | os.PathLike[str] | None) -> Sig:
    """[mtime_ns, size] of a file, or None if it does not exist."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


class BuildCache:
    def __init__(self, path: str | os.PathLike[str], entries: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = entries or {}

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BuildCache:
        """The saved cache, or an empty one if there is none or it is unreadable/outdated."""
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("images"), dict):
                return cls(path, data["images"])
        except (OSError, ValueError):
            pass
        return cls(path)

    def save(self) -> None:
        data = {"format": FORMAT, "images": self.entries}
        write_bytes(self.path, json.dumps(data, separators=(",", ":")).encode())

    # Each part of an entry is kept with the key (source signatures) it was made from.
    @staticmethod
    def stats_key(mask: Sig, cams: Sig, n_labels: int) -> list[Any]:
        return [STATS_VERSION, mask, cams, n_labels]

    @staticmethod
    def gt_key(mask: Sig, gt: Sig, n_labels: int) -> list[Any]:
        return [STATS_VERSION, mask, gt, n_labels]

    @staticmethod
    def pictures_key(mask: Sig, photo: Sig, photo_path: str | None) -> list[Any]:
        return [RENDER_VERSION, mask, photo, photo_path]

    @staticmethod
    def gt_pictures_key(mask: Sig, gt: Sig, photo: Sig, photo_path: str | None) -> list[Any]:
        return [GT_RENDER_VERSION, mask, gt, photo, photo_path]

    @staticmethod
    def heat_key(cams: Sig) -> list[Any]:
        return [HEAT_VERSION, cams]

    def get(self, stem: str, part: str, key: list[Any]) -> Any:
        """The cached ``part`` of an image if it was made from ``key``, else None."""
        entry = self.entries.get(stem)
        if entry and entry.get(part + "_key") == key:
            return entry.get(part)
        return None

    def put(self, stem: str, part: str, key: list[Any], value: Any) -> None:
        entry = self.entries.setdefault(stem, {})
        entry[part + "_key"] = key
        entry[part] = value
