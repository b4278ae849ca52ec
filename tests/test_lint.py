"""Lint contracts of the code base.

- The library knows nothing of the terminal: no module outside ``clipseg_cli/cli/`` imports
  ``clipseg_cli.cli``, Typer or Rich (progress goes through callbacks). ``clipseg_cli/__main__.py``,
  the ``python -m clipseg_cli`` entry point, is the one exception.
- ``ruff check`` and ``ruff format --check`` pass on the whole tree (settings in pyproject.toml).
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipseg_cli"
TERMINAL = ("clipseg_cli.cli", "typer", "rich", "click")
ENTRY_POINTS = {PACKAGE / "__main__.py"}


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (or ``source``, read as that file),
    at any depth (function bodies too)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    text = path.read_text(encoding="utf-8") if source is None else source
    found = []
    for node in ast.walk(ast.parse(text, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the module's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def is_terminal(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in TERMINAL)


def test_the_scan_sees_every_form_of_import() -> None:
    source = "import rich.console\nfrom clipseg_cli import cli\ndef f():\n    from ..cli.console import console\n"
    mods = [m for _, m in imported_modules(PACKAGE / "report" / "__init__.py", source)]
    assert "rich.console" in mods and "clipseg_cli.cli" in mods and "clipseg_cli.cli.console" in mods
    assert all(is_terminal(m) for m in ("rich.console", "clipseg_cli.cli", "clipseg_cli.cli.console", "typer"))
    assert not any(is_terminal(m) for m in ("clipseg_cli.clip.model", "richer", "typing"))


def test_library_modules_never_import_the_terminal() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "cli") in path.parents or path in ENTRY_POINTS:
            continue
        offenders += [f"{path.relative_to(ROOT)}:{line} imports {m}" for line, m in imported_modules(path) if is_terminal(m)]
    assert offenders == [], "\n".join(offenders)


def ruff_binary() -> str:
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        pytest.skip("ruff is not installed here (pip install -e '.[test]' installs it; CI does)")
    return str(find_ruff_bin())


@pytest.mark.parametrize("args", [["check", "--no-fix"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args: list[str]) -> None:
    result = subprocess.run([ruff_binary(), *args, "."], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
