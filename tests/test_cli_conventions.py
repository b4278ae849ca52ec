"""Issue 14, points 6 and 7 (and issue 16): every command's options follow one convention.

Help shows capital argument names, a metavar for every option and no leaked Python types; the
options several commands share have the same names everywhere; renamed options keep working;
usage errors and mistyped commands are one `error:` line with exit 2; --visualize pictures
carry a colour key.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.main import get_command

from clipseg_cli.cli import app
from clipseg_cli.io.masks import voc_palette
from tests.conftest import make_image, write_labels


def _commands(group=None, path=()):  # type: ignore[no-untyped-def]
    """(command path, click command) for every leaf command of the app."""
    group = group or get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


ALL = sorted(path for path, _ in _commands())


def test_every_command_is_covered() -> None:
    assert {"label", "eval", "sharpness", "retrain", "predict", "report"} <= {p[0] for p in ALL}
    assert ("train-cam", "dalnet") in ALL and ("refine", "train") in ALL


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_help_has_capital_arguments_and_no_leaked_types(cli, path: tuple[str, ...], monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    result = cli(*path, "--help")
    assert result.exit_code == 0, result.output
    text = result.output
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "<" not in usage
    arguments = usage.split("[OPTIONS]")[1].split()
    assert arguments and all(a.strip("[].") == a.strip("[].").upper() for a in arguments), usage
    leaked = re.findall(r"<(?:bool|str|int|float|path|Path|list\[[a-z]+\]|[A-Za-z]+,[A-Za-z]+)>\S*", text)
    assert leaked == [], leaked


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_shared_options_have_one_spelling(path: tuple[str, ...]) -> None:
    cmd = dict(_commands())[path]
    opts = {p.name: (tuple(p.opts), p.metavar) for p in cmd.params if not getattr(p, "hidden", False)}
    every = {o for names, _ in opts.values() for o in names}
    if "--labels" in every:  # labels: -l/--labels FILE, and --annotations DIR beside it
        assert opts["labels"] == (("--labels", "-l"), "FILE") and opts["annotations"] == (("--annotations",), "DIR")
    for name, spelling in {"classes": (("--classes", "-c"), "SET"), "device": (("--device",), "auto|cpu|cuda"),
                           "weights": (("--weights",), "FILE")}.items():  # fmt: skip
        if name in opts:
            assert opts[name] == spelling, (path, name)
    assert "--batch" not in every and "--warmup" not in every  # --batch-size, --warmup-iters
    if "--out" in every:
        assert opts["out"][0] == ("--out", "-o")
    for param in cmd.params:  # every option says what it takes (flags: nothing)
        if param.param_type_name == "option" and not getattr(param, "is_flag", False):
            assert param.metavar and "<" not in param.metavar, (path, param.name)


def test_a_mistyped_command_is_suggested_not_read_as_a_folder(cli) -> None:
    result = cli("evl", "a", "b")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "did you mean 'eval'" in lines[0].lower()
    assert "--out" not in lines[0]


def test_a_folder_is_still_the_default_command(cli, tmp_path: Path) -> None:
    result = cli(tmp_path / "nowhere", "--labels", tmp_path / "l.json", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "image folder not found" in result.output


@pytest.mark.parametrize(
    "args, words",
    [
        (["label", "images"], "missing option '--out'"),
        (["label", "images", "--out", "o", "--synonyms", "word"], "'word' is not one of 'sentence', 'feature', 'cam'"),
        (["eval", "a", "b", "--frobnicate"], "no such option: --frobnicate"),
        (["retrain", "a", "b", "--out", "o", "--iters", "many"], "invalid value for '--iters'"),
    ],
)
def test_usage_errors_are_one_line(cli, args: list[str], words: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ") and words in lines[0].lower().replace('"', "'")


def test_renamed_options_keep_working_with_a_warning() -> None:
    root = get_command(app)
    retrain = root.commands["retrain"]
    assert retrain._rename(["--batch", "4", "--iters=3"]) == ["--batch-size", "4", "--iters=3"]
    dalnet = root.commands["train-cam"].commands["dalnet"]
    assert dalnet._rename(["--warmup=20", "--", "--warmup"]) == ["--warmup-iters=20", "--", "--warmup"]
    label = root.commands["label"]
    assert label._rename(["--batch", "4"]) == ["--batch-size", "4"]  # label has --batch-size too (issue 15)
    report = root.commands["report"]
    assert report._rename(["--batch", "4"]) == ["--batch", "4"]  # no --batch-size: nothing to map


def test_refine_warmup_iterations_and_the_old_fraction() -> None:
    from clipseg_cli.cli.cmd_refine import _warmup_fraction

    assert _warmup_fraction(None, None, 20000) == 0.075  # WeakCLIP's 1500 of 20000
    assert _warmup_fraction(1500, None, 20000) == 0.075
    assert _warmup_fraction(None, 0.25, 8) == 0.25  # deprecated --warmup, a fraction
    assert _warmup_fraction(2, None, 8) == 0.25


def test_vitpcm_takes_iters_or_epochs_not_both(cli, tmp_path: Path) -> None:
    result = cli("train-cam", "vitpcm", tmp_path, "--labels", tmp_path / "l.json", "--out", tmp_path / "o",
                 "--iters", "5", "--epochs", "2")  # fmt: skip
    assert result.exit_code == 2 and "give --iters or --epochs, not both" in result.output


def test_visualize_pictures_have_a_colour_key(tmp_path: Path, cli, golden_weights: Path) -> None:
    from clipseg_cli.io.visualize import TILE_HEIGHT

    make_image(tmp_path / "images" / "a.png", (40, 60))
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat", "person"]})
    out = tmp_path / "out"
    result = cli(tmp_path / "images", "--labels", labels, "--out", out, "--weights", golden_weights, "--visualize")
    assert result.exit_code == 0, result.output
    vis = np.asarray(Image.open(out / "vis" / "a.png").convert("RGB"))
    key = vis[TILE_HEIGHT + 24 :]  # below the caption bar and the tiles
    assert key.shape[0] >= 18
    palette = voc_palette()
    colours = {tuple(int(c) for c in px) for px in key.reshape(-1, 3)}
    for value in (8, 15):  # cat, person: their mask colours are in the key
        assert tuple(int(c) for c in palette[value]) in colours
