"""`wsss-label eval` as a user runs it: matching, options, errors, pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.io.masks import save_mask

REPORT_KEYS = {"miou", "per_class", "pixel_accuracy", "ignored_fraction", "n_images"}


def _run(*args: str):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def _square(h: int = 20, w: int = 30, label: int = 1) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[5:15, 5:20] = label
    return m


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "masks"
    for key in ("2007_000001", "nested/dir/2007_000002"):
        save_mask(gt / f"{key}.png", _square())
        save_mask(pred / f"{key}.png", _square())
    return pred, gt


def test_perfect_prediction_and_report_keys(folders, tmp_path):
    pred, gt = folders
    save_mask(pred / "extra_without_gt.png", _square())  # predictions without GT are ignored
    out = tmp_path / "sub" / "report.json"
    result = _run(pred, gt, "--classes", "voc", "--out", out)
    assert result.exit_code == 0, result.output
    rep = json.loads(out.read_text())
    assert REPORT_KEYS <= rep.keys()
    assert rep["miou"] == 1.0 and rep["pixel_accuracy"] == 1.0 and rep["ignored_fraction"] == 0.0
    assert rep["n_images"] == 2
    assert len(rep["per_class"]) == 21 and rep["n_classes_in_gt"] == 2
    assert "aeroplane" in result.output and "Traceback" not in result.output
    assert not list(out.parent.glob(".*.part"))


def test_out_dash_writes_json_to_stdout(folders):
    pred, gt = folders
    result = _run(pred, gt, "--out", "-")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["miou"] == 1.0


def test_missing_predictions_exit_2_listing_first_few(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for i in range(8):
        save_mask(gt / f"img{i}.png", _square())
    save_mask(pred / "img3.png", _square())
    result = _run(pred, gt)
    assert result.exit_code == 2
    line = result.output.strip()
    assert "Traceback" not in result.output
    assert "7 of 8 GT files have no .png prediction" in line
    assert "img0, img1, img2, img4, img5, ..." in line
    assert "img6" not in line and "img3," not in line


def test_matching_is_by_relative_path_not_just_name(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    save_mask(gt / "a" / "x.png", _square())
    save_mask(pred / "b" / "x.png", _square())
    result = _run(pred, gt)
    assert result.exit_code == 2
    assert "a/x" in result.output


def test_hint_when_given_the_run_folder(tmp_path):
    out = tmp_path / "run"
    save_mask(tmp_path / "gt" / "x.png", _square())
    save_mask(out / "masks" / "x.png", _square())
    result = _run(out, tmp_path / "gt")
    assert result.exit_code == 2
    assert f"pass {out / 'masks'}" in " ".join(result.output.split())


def test_plain_greyscale_gt_and_class_file(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    Image.fromarray(_square(label=2), mode="L").save(gt / "x.png")  # plain greyscale, value 2
    save_mask(pred / "x.png", _square(label=2))
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\nbird: avian, birdie\n\nship: boat\n")
    result = _run(pred, gt, "--classes", classes, "--out", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert list(rep["per_class"]) == ["background", "bird", "ship"]
    assert rep["per_class"]["ship"]["iou"] == 1.0 and rep["per_class"]["bird"]["in_gt"] is False


@pytest.mark.parametrize(
    "make, args, message",
    [
        ("label30", ["--classes", "voc"], "outside 0..20"),
        ("shape", [], "differs from the GT"),
        ("corrupt", [], "cannot read label map"),
        ("rgb", [], "palette or greyscale"),
        (None, ["--classes", "nope/classes.txt"], "not found"),
        (None, ["--classes", "background,cat"], "implicit"),
        (None, ["--classes", "cat,cat"], "listed twice"),
        (None, ["--cam-key", "cam"], "--cam-key needs --cams"),
        (None, ["--cams", "--pred-ignore", "background"], "--pred-ignore applies"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, make, args, message):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    save_mask(gt / "x.png", _square())
    save_mask(pred / "x.png", _square())
    if make == "label30":
        save_mask(pred / "x.png", _square(label=30))
    elif make == "shape":
        save_mask(pred / "x.png", _square(h=21))
    elif make == "corrupt":
        (pred / "x.png").write_bytes(b"\x89PNG not really")
    elif make == "rgb":
        Image.new("RGB", (30, 20)).save(gt / "x.png")
    result = _run(pred, gt, *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert result.output.count("error:") == 1


def test_out_folder_and_empty_gt_are_errors(tmp_path, folders):
    pred, gt = folders
    result = _run(pred, gt, "--out", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output
    result = _run(pred, gt, "--out", gt / "2007_000001.png" / "r.json")  # parent is a file
    assert result.exit_code == 2 and "cannot create output folder" in result.output
    (tmp_path / "empty").mkdir()
    result = _run(pred, tmp_path / "empty")
    assert result.exit_code == 2 and "no .png label maps" in result.output


def test_visualize_writes_readable_pictures(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    g = _square()
    p = _square()
    p[0:3] = 255  # left-out pixels
    p[10, 0:5] = 2  # wrong pixels
    save_mask(gt / "a" / "one.png", g)
    save_mask(pred / "a" / "one.png", p)
    vis = tmp_path / "vis"
    result = _run(pred, gt, "--visualize", vis)
    assert result.exit_code == 0, result.output
    with Image.open(vis / "images" / "a" / "one.png") as im:
        im.load()
        assert im.mode == "RGB" and im.width == 3 * 30 + 2 * 6 and im.height > 20
        arr = np.asarray(im)
    assert (arr == (230, 30, 30)).all(axis=-1).sum() >= 5  # wrong pixels are red
    assert (arr == (250, 200, 0)).all(axis=-1).sum() >= 3 * 30  # left-out pixels are yellow
    with Image.open(vis / "per_class_iou.png") as im:
        im.load()
        assert im.format == "PNG" and im.width >= 300
