"""Atomic file writes: a reader never sees a half-written file, Ctrl-C leaves none behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# errno values that mean a whole folder takes no more files (not one file's problem).
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def is_storage_failure(exc: BaseException) -> bool:
    """True for a full disk, an exceeded quota or a read-only file system."""
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


# mkstemp creates files readable by the owner only; finished outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


def final_name(path: str | os.PathLike[str]) -> str:
    """The file an ``atomic_path`` temporary (``.NAME.XXXXXXXX.part``) becomes; other paths as they are."""
    path = Path(path)
    name = path.name
    if name.startswith(".") and name.endswith(".part") and name.count(".") >= 3:
        return str(path.with_name(name[1 : -len(".part")].rsplit(".", 1)[0]))
    return str(path)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only on success."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_json(dest: str | os.PathLike[str], obj: Any) -> None:
    write_bytes(dest, (json.dumps(obj, indent=2) + "\n").encode())


def write_npz(dest: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def remove_stale_parts(folder: str | os.PathLike[str]) -> int:
    """Delete ``*.part`` leftovers of a killed process; returns how many were removed."""
    count = 0
    root = Path(folder)
    if root.is_dir():
        for part in root.rglob(".*.part"):
            with contextlib.suppress(OSError):
                part.unlink()
                count += 1
    return count
