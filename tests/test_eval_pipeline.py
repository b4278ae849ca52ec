"""eval reads what `wsss-label label --save-cams` writes (tiny random CLIP from the golden folder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.io.masks import load_label_map

ROOT = Path(__file__).resolve().parents[1]
KEY = "2007_000129"


def _miou(gt: np.ndarray, pred: np.ndarray, n: int) -> float:
    """Per-class set operations; predicted 255 and GT 255 left out."""
    valid = (gt != 255) & (pred != 255)
    ious = []
    for c in range(n):
        if (gt[gt != 255] == c).any():
            ious.append(((gt == c) & (pred == c))[valid].sum() / ((gt == c) | (pred == c))[valid].sum())
    return float(np.mean(ious))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, golden_weights: Path) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    (root / "images").mkdir()
    shutil.copy(ROOT / "examples" / "images" / f"{KEY}.jpg", root / "images")
    (root / "labels.txt").write_text(f"{KEY}.jpg person diningtable chair bottle\n")
    result = CliRunner().invoke(app, ["label", str(root / "images"), "--labels", str(root / "labels.txt"),
                                      "--out", str(root / "out"), "--weights", str(golden_weights),
                                      "--device", "cpu", "--save-cams"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return root


def test_eval_of_label_output(labelled):
    gt_dir = ROOT / "examples" / "gt"
    out = labelled / "out"
    result = CliRunner().invoke(app, ["eval", str(out / "masks"), str(gt_dir), "--out", str(labelled / "m.json")])
    assert result.exit_code == 0, result.output
    rep = json.loads((labelled / "m.json").read_text())
    gt = load_label_map(gt_dir / f"{KEY}.png")
    pred = load_label_map(out / "masks" / f"{KEY}.png")
    assert rep["n_images"] == 1
    assert abs(rep["miou"] - _miou(gt, pred, 21)) < 1e-9

    result = CliRunner().invoke(app, ["eval", str(out / "cams"), str(gt_dir), "--cams", "--out", str(labelled / "c.json")])
    assert result.exit_code == 0, result.output
    rep = json.loads((labelled / "c.json").read_text())
    with np.load(out / "cams" / f"{KEY}.npz") as data:
        cams, labels = data["refined"], data["labels"]
    assert sorted(labels.tolist()) == [4, 8, 10, 14]  # bottle, chair, diningtable, person
    by_t = {}
    for t in [round(0.05 * i, 2) for i in range(1, 20)]:
        pred_t = np.where(cams.max(0) >= np.float32(t), 1 + labels[cams.argmax(0)], 0)
        by_t[t] = _miou(gt, pred_t, 21)
    assert [r["miou"] for r in rep["sweep"]] == pytest.approx(list(by_t.values()), abs=1e-9)
    assert rep["best_threshold"] == pytest.approx(max(by_t, key=by_t.get))
