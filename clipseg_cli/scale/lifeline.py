"""Worker processes that never outlive the run, never see Ctrl-C, and leave nothing in /tmp.

- ``start_forkserver``: starts multiprocessing's fork server with SIGINT blocked. The server
  and every worker it forks inherit the blocked signal, so the terminal's Ctrl-C (sent to the
  whole process group) reaches the main process alone, which then stops the workers itself.
  (A fork server or worker that got Ctrl-C while starting died with a traceback and broke
  the pool.) A Ctrl-C pressed meanwhile waits in the main process, it is not lost.
- ``lifeline_end`` / ``watch_lifeline``: a pipe whose write end only the main process holds.
  Each worker watches the read end in a thread; when the main process ends in any way (kill -9
  included) the pipe reads end-of-file and the worker exits at once, instead of finishing the
  queued images into ``--out`` and then waiting forever for more.
- The fork server's ``/tmp/pymp-*`` folder (its socket) is removed by the main process at a
  normal exit; this module, preloaded in the fork server, removes it when the server outlives
  the main process (which happens when that one was killed).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
from typing import Any

# "<main process id>:<its multiprocessing temp folder>", set for the fork server only.
_SERVER_ENV = "WSSS_LABEL_FORKSERVER_TMP"
# Exit status of a worker whose main process is gone.
ORPHANED_EXIT = 75

_ends: tuple[Any, Any] | None = None  # (read end, write end) in the main process


def lifeline_end() -> Any:
    """The read end to hand to each worker (the main process keeps the write end until it exits)."""
    global _ends
    if _ends is None:
        _ends = multiprocessing.Pipe(duplex=False)
    return _ends[0]


def watch_lifeline(end: Any) -> None:
    """In a worker: exit the process as soon as the main process is gone."""

    def watch() -> None:
        with contextlib.suppress(Exception):
            multiprocessing.connection.wait([end])
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="wsss-label-lifeline", daemon=True).start()


def start_forkserver() -> None:
    """Start the fork server (if not running) with SIGINT blocked and its temp-folder cleanup armed."""
    from multiprocessing import forkserver, resource_tracker, util

    # The tracker first: starting it unblocks SIGINT in this thread, whatever was blocked before.
    resource_tracker.ensure_running()
    folder = util.get_temp_dir()
    previous_env = os.environ.get(_SERVER_ENV)
    os.environ[_SERVER_ENV] = f"{os.getpid()}:{folder}"
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if previous_env is None:
            os.environ.pop(_SERVER_ENV, None)
        else:
            os.environ[_SERVER_ENV] = previous_env


def _arm_server_cleanup() -> None:
    """In the fork server (a child of the main process that named it): remove the temp folder
    at exit if the main process is gone by then (a normal exit removes it in the main process)."""
    main_pid, _, folder = os.environ.get(_SERVER_ENV, "").partition(":")
    if not folder or str(os.getppid()) != main_pid:
        return

    def cleanup() -> None:
        if str(os.getppid()) != main_pid:
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)


_arm_server_cleanup()
