"""Errors that end a command with one clear line and a documented exit code."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class WsssError(Exception):
    """A problem the user can fix; printed as one line, never as a traceback."""

    exit_code: int = EXIT_USAGE


class ConfigError(WsssError):
    """Bad options, files or weights: nothing was done (exit 2)."""


class WeightsError(ConfigError):
    """CLIP weights missing, unreadable or with the wrong checksum."""


class ImageError(Exception):
    """One image could not be processed; the run goes on (exit 1 at the end)."""


class OutputBusyError(ConfigError):
    """Another run holds the output folder (exit 2)."""


class OutputWriteError(WsssError):
    """The output folder stopped taking files (disk full, read-only, quota): the run stops (exit 2)."""
