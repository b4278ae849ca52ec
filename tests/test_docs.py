"""The README stays a front page and the documentation stays consistent with the repository.

- README.md is at most 15 KB;
- every relative link in README.md and docs/ points to a file that exists (and to a heading
  that exists, when it names one in a Markdown file);
- the README's set-up block is exactly the install and test commands that `.ci/run` runs;
- every `wsss-label` subcommand has a row in the README's command table with a docs link;
- no tracked text file refers to the reference-material folder outside the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 15 * 1024

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", "``", line))
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github_rules():
    # worked out by hand from GitHub's rule (lower-case, drop punctuation, spaces -> hyphens)
    assert slug("The main job") == "the-main-job"
    assert slug("`wsss-label label`: throughput and memory") == "wsss-label-label-throughput-and-memory"
    assert slug("`--workers N`: the model never waits for the CRF") == "--workers-n-the-model-never-waits-for-the-crf"
    assert slug("Files in `--out`") == "files-in---out"


def test_readme_is_a_front_page():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail into docs/ (limit {README_LIMIT})"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            broken.append(f"{target} (outside the repository)")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def ci_setup_commands() -> list[str]:
    """The commands `.ci/run` runs after its '# README set-up, command N' comments, in order."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    found: dict[int, str] = {}
    for i, line in enumerate(lines):
        m = re.match(r"\s*#\s*README set-up, command (\d+)", line)
        if not m:
            continue
        rest = [ln.strip() for ln in lines[i + 1 :] if ln.strip() and not ln.strip().startswith("#")]
        assert rest, f".ci/run: no command after {line.strip()!r}"
        found[int(m.group(1))] = rest[0]
    return [found[k] for k in sorted(found)]


def readme_setup_block() -> list[str]:
    """The command lines of the first code block under the README's '## Set-up' heading."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(r"^##\s+Set-up\s*$", ln))
    open_at = next(i for i in range(start + 1, len(lines)) if FENCE.match(lines[i].strip()))
    close_at = next(i for i in range(open_at + 1, len(lines)) if FENCE.match(lines[i].strip()))
    return [ln.strip() for ln in lines[open_at + 1 : close_at] if ln.strip() and not ln.strip().startswith("#")]


def test_readme_setup_is_what_ci_runs():
    ci = ci_setup_commands()
    assert len(ci) == 2, f".ci/run should mark the install and the test command, found {ci}"
    assert ci[0].startswith("pip install") and "pytest" in ci[1]
    assert readme_setup_block() == ci


def subcommands() -> list[str]:
    import typer.main

    from clipseg_cli.cli import app

    return sorted(typer.main.get_command(app).commands)


def command_table_rows() -> list[str]:
    """The table rows of the README's '## Commands' section."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if re.match(r"^##\s+Commands\s*$", ln))
    rows = []
    for ln in lines[start + 1 :]:
        if ln.startswith("## "):
            break
        if ln.startswith("|"):
            rows.append(ln)
    return rows


def test_every_subcommand_in_the_readme_table():
    table = command_table_rows()
    names = subcommands()
    assert {"label", "eval", "report"} <= set(names)  # the app really was read
    missing = []
    for name in names:
        pattern = re.compile(rf"^\|\s*`wsss-label (\[{re.escape(name)}\]|{re.escape(name)})(?![\w-])")
        rows = [row for row in table if pattern.search(row)]
        if not any(re.search(r"\]\(docs/[^)#]+\.md(#[^)]*)?\)", row) for row in rows):
            missing.append(name)
    assert not missing, f"subcommands without a row and docs link in README's command table: {missing}"


def tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".venv-ci", "__pycache__", ".pytest_cache"}
        paths = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [p for p in paths if p.is_file()]


def test_nothing_refers_outside_the_repository():
    needles = [".." + "/shared", "/work" + "/shared"]  # split so this file does not match itself
    offenders = []
    for path in tracked_text_files():
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", errors="replace")
        offenders += [f"{path.relative_to(ROOT)}: {n}" for n in needles if n in text]
    assert not offenders, f"files refer to folders outside the repository: {offenders}"
