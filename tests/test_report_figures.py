"""Issue 14, point 4: the gallery sorts worst-first from any run, from any folder, after a move.

Each run.json entry carries the image's mean CRF confidence and ignored share (no --save-cams
needed); the report reads them; the image folder is found from run.json wherever the report is
built from and after the run folder moves; when the photos are gone the page says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.io.masks import IGNORE_LABEL, load_label_map
from clipseg_cli.report import build
from tests.conftest import make_image, write_labels
from tests.test_report_data import fake_run, page_json


@pytest.fixture
def three(tmp_path: Path):
    images = tmp_path / "images"
    for i, size in enumerate([(48, 64), (40, 40), (56, 32)]):
        make_image(images / f"{'cba'[i]}.png", size, seed=i)
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"], "b.png": ["dog", "person"], "c.png": ["horse"]})
    return images, labels


def test_run_json_records_each_images_confidence_and_ignored_share(tmp_path: Path, cli, golden_weights, three) -> None:
    images, labels = three
    out = tmp_path / "out"
    result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--save-cams", "--workers", "0")
    assert result.exit_code == 0, result.output
    entries = json.loads((out / "run.json").read_text())["images"]
    assert len(entries) == 3
    for entry in entries:
        stem = entry["image"][:-4]
        mask = load_label_map(out / "masks" / f"{stem}.png")
        assert entry["ignored"] == pytest.approx(np.mean(mask == IGNORE_LABEL), abs=1e-6)
        confidence = np.load(out / "cams" / f"{stem}.npz")["confidence"].astype(np.float64)  # float16 on disk
        assert entry["confidence"] == pytest.approx(confidence.mean(), abs=2e-3)

    no_crf = tmp_path / "no-crf"
    result = cli(images, "--labels", labels, "--out", no_crf, "--weights", golden_weights, "--no-crf", "--workers", "0")
    assert result.exit_code == 0
    for entry in json.loads((no_crf / "run.json").read_text())["images"]:
        assert entry["confidence"] is None and entry["ignored"] == 0.0  # no CRF: no confidence, no 255


def test_worst_first_from_run_json_alone(tmp_path: Path) -> None:
    """No cams/ folder: the order comes from run.json's figures, lowest confidence first."""
    mask = np.zeros((8, 8), np.uint8)
    out = fake_run(tmp_path, {name: {"mask": mask, "labels": ["cat"]} for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg")})
    run = json.loads((out / "run.json").read_text())
    figures = {"a.jpg": 0.9, "b.jpg": 0.4, "c.jpg": None, "d.jpg": 0.7}  # c: an entry without the figure
    for entry in run["images"]:
        entry["confidence"] = figures[entry["image"]]
    (out / "run.json").write_text(json.dumps(run))
    assert not (out / "cams").exists()
    result = build(out, workers=1)
    assert [r["image"] for r in result.records] == ["b.jpg", "d.jpg", "a.jpg", "c.jpg"]  # unknown last
    assert [r["confidence"] for r in page_json(result.index)["images"] if r["image"] == "b.jpg"] == [0.4]


def test_a_run_without_confidence_says_how_it_is_sorted(tmp_path: Path) -> None:
    out = fake_run(tmp_path, {"a.jpg": {"mask": np.zeros((8, 8), np.uint8), "labels": ["cat"]}})
    result = build(out, workers=1)
    assert any("sorted by name" in w for w in result.warnings)
    assert "sorted by name" in result.index.read_text()


def test_the_report_finds_the_photos_from_any_folder_and_after_a_move(tmp_path: Path, cli, golden_weights, three, monkeypatch) -> None:
    images, labels = three
    monkeypatch.chdir(tmp_path)  # the run is made with relative paths
    result = cli("images", "--labels", "labels.json", "--out", "runs/first", "--weights", golden_weights, "--workers", "0")
    assert result.exit_code == 0, result.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # another working folder
    first = build(tmp_path / "runs" / "first", workers=1)
    assert first.warnings == [] and all(r["photo"] == "orig" for r in first.records)

    moved = tmp_path / "archive" / "2026" / "first"
    moved.parent.mkdir(parents=True)
    shutil.move(tmp_path / "runs" / "first", moved)  # the run folder moves, the photos stay
    again = build(moved, workers=1)
    assert again.warnings == [] and all(r["photo"] == "orig" for r in again.records)

    shutil.move(images, tmp_path / "archive" / "images")  # the photos follow: found beside the run as before
    together = build(moved, workers=1)
    assert together.warnings == [] and all(r["photo"] == "orig" for r in together.records)

    shutil.move(tmp_path / "archive" / "images", tmp_path / "images-gone")  # now the photos cannot be found
    lost = build(moved, workers=1)
    assert lost.warnings and "not found" in lost.warnings[0]
    assert "not found" in lost.index.read_text()  # said on the page, not only in the terminal
    assert all(r["photo"] is None for r in lost.records)
