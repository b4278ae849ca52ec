"""One run per output folder: an exclusive lock on the folder, held for the whole run.

``output_lock(folder)`` makes the folder if needed and takes ``folder/.wsss-label.lock`` with
``flock``: the kernel releases it when the process ends in any way (kill -9 included), so the
lock of a dead run is simply taken over; the file holds the owner's process id, for the one
line a second run prints. Taking it is also the check that the folder can be written to, made
before anything is loaded: a file in the way, a read-only file system or a full disk is a
``ConfigError`` naming the folder. The lock file is removed at the end (and the folder too,
if it was made here and nothing else was written into it). Within one process the lock is
re-entrant: a command that runs another one on its folder (``reproduce`` runs ``label``)
holds it once.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from clipseg_cli.errors import ConfigError, OutputBusyError

LOCK_NAME = ".wsss-label.lock"

_held: dict[Path, int] = {}  # folders this process holds -> how many holders

F = TypeVar("F", bound=Callable[..., Any])


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _make_folder(folder: Path, option: str) -> bool:
    """Create ``folder`` (and parents); True if it did not exist."""
    if folder.is_dir():
        return False
    if folder.exists() or folder.is_symlink():
        raise ConfigError(f"{option} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise ConfigError(f"{option} {folder} is a file, not a folder") from None
        return False
    except OSError as exc:
        raise ConfigError(f"cannot create {option} folder {folder}: {_reason(exc)}") from None
    return True


def _owner(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"process {text}"
    return "a process that is starting"


def _acquire(path: Path, folder: Path, option: str) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot write to {option} folder {folder}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise OutputBusyError(
                f"{folder} is in use by another wsss-label run ({owner}); wait for it to finish or choose another {option}"
            ) from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            raise ConfigError(f"cannot lock {option} folder {folder}: {_reason(exc)}") from None
        # The previous owner may have removed the file between our open and our lock: then
        # the lock is on a file nobody else sees; take the one now at ``path`` instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _write_owner(fd: int, folder: Path, option: str) -> None:
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
    except OSError as exc:
        raise ConfigError(f"cannot write to {option} folder {folder}: {_reason(exc)}") from None


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str], option: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` for this process (see the module); yields the folder."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield folder
        finally:
            _held[key] -= 1
        return
    created = _make_folder(folder, option)
    path = folder / LOCK_NAME
    fd = -1
    try:
        fd = _acquire(path, folder, option)
        _write_owner(fd, folder, option)
        _held[key] = 1
        yield folder
    finally:
        _held.pop(key, None)
        if fd >= 0:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: nothing was written


def holds_output(parameter: str = "out", option: str = "--out") -> Callable[[F], F]:
    """Decorate a command body so it runs holding ``output_lock`` on its argument ``parameter``.

    The lock is taken before the body runs (so before any model is loaded); a ``None``
    argument (no output folder) takes none.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            folder = bound.arguments.get(parameter)
            if folder is None:
                return func(*args, **kwargs)
            with output_lock(Path(folder), option):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
