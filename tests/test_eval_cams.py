"""`wsss-label eval --cams`: the background-threshold sweep over saved CAMs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.evaluation.cam_sweep import DEFAULT_THRESHOLDS, CamSweep
from clipseg_cli.io.atomic import write_npz
from clipseg_cli.io.masks import save_mask


def _run(*args: str):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def test_thresholds_are_005_to_095():
    assert DEFAULT_THRESHOLDS == pytest.approx([0.05 * i for i in range(1, 20)])
    assert len(DEFAULT_THRESHOLDS) == 19


def _brute_force(gt, cams, labels, t, n):
    """One confusion matrix by direct thresholding (float32 comparison) and a Python-free loop."""
    peak = cams.max(axis=0)
    pred = np.where(peak >= np.float32(t), 1 + np.asarray(labels)[cams.argmax(axis=0)], 0)
    conf = np.zeros((n, n), np.int64)
    valid = gt != 255
    np.add.at(conf, (gt[valid].astype(int), pred[valid].astype(int)), 1)
    return conf


def test_single_pass_sweep_equals_thresholding_each_t():
    rng = np.random.default_rng(3)
    n = 6
    sweep = CamSweep(n)
    images = []
    for i in range(3):
        h, w = 23, 31 + i
        gt = rng.integers(0, n, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        labels = rng.choice(n - 1, size=i + 1, replace=False)  # 1, 2 and 3 CAMs
        cams = rng.random((labels.size, h, w)).astype(np.float32)
        cams[0, 0, :4] = [0.35, 0.5, 0.05, 0.95]  # values exactly on thresholds
        sweep.add(gt, cams, labels)
        images.append((gt, cams, labels))
    mats = sweep.matrices()
    assert mats.shape == (19, n, n)
    for ti, t in enumerate(DEFAULT_THRESHOLDS):
        expected = sum(_brute_force(g, c, l, t, n) for g, c, l in images)
        assert np.array_equal(mats[ti], expected), t


def test_image_without_labels_is_all_background():
    sweep = CamSweep(3, (0.5,))
    gt = np.array([[0, 1, 255]], np.uint8)
    sweep.add(gt, np.zeros((0, 1, 3), np.float32), np.zeros(0, np.int64))
    assert sweep.matrices()[0].tolist() == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]


def _write_case(root: Path) -> None:
    """4x4 GT: left half class 2 (label 3, 0-based class 2), right half background, one void pixel.

    `refined`: object pixels 0.42 or 0.9, background pixels 0.1 or 0.37 -> only t = 0.40 separates
    them (0.37 < t <= 0.42). `cam`: object 0.62/0.9, background 0.1/0.57 -> only t = 0.60.
    """
    gt = np.zeros((4, 4), np.uint8)
    gt[:, :2] = 3
    gt[0, 3] = 255
    obj = np.array([[0.42, 0.9]] * 4, np.float32)
    bg = np.array([[0.1, 0.37]] * 4, np.float32)
    refined = np.concatenate([obj, bg], axis=1)[None]
    cam = np.where(refined == np.float32(0.42), 0.62, refined)
    cam = np.where(cam == np.float32(0.37), 0.57, cam).astype(np.float32)
    save_mask(root / "gt" / "img.png", gt)
    write_npz(root / "cams" / "img.npz", labels=np.array([2]), cam=cam, refined=refined, confidence=np.ones((4, 4), np.float16))


def test_cli_sweep_picks_the_separating_threshold(tmp_path):
    _write_case(tmp_path)
    out = tmp_path / "r.json"
    result = _run(tmp_path / "cams", tmp_path / "gt", "--cams", "--out", out)
    assert result.exit_code == 0, result.output
    rep = json.loads(out.read_text())
    assert rep["mode"] == "cams" and rep["cam_key"] == "refined"
    assert rep["best_threshold"] == pytest.approx(0.40)
    assert rep["miou"] == 1.0 and rep["n_images"] == 1
    sweep = {round(r["threshold"], 2): r["miou"] for r in rep["sweep"]}
    assert len(sweep) == 19 and max(sweep.values()) == 1.0
    assert [t for t, m in sweep.items() if m == 1.0] == [0.40]
    # 15 valid pixels: 8 object (label 3), 7 background (one void).
    # t = 0.05: everything foreground -> bg IoU 0/7 = 0, obj IoU 8/15 -> mIoU = 4/15
    assert sweep[0.05] == pytest.approx(4 / 15, abs=1e-12)
    # t = 0.20: the 4 background pixels at 0.1 turn background (3 at 0.37 stay object; the void
    #   pixel was one of 0.37) -> bg IoU 4/7, obj IoU 8/11 -> mIoU = (4/7 + 8/11)/2 = 50/77
    assert sweep[0.20] == pytest.approx(50 / 77, abs=1e-12)
    # t = 0.95: everything background -> bg IoU 7/15, obj IoU 0 -> mIoU = 7/30
    assert sweep[0.95] == pytest.approx(7 / 30, abs=1e-12)
    assert "best threshold t = 0.40" in result.output


def test_cli_cam_key_cam_and_visualize(tmp_path):
    _write_case(tmp_path)
    out, vis = tmp_path / "r.json", tmp_path / "vis"
    result = _run(tmp_path / "cams", tmp_path / "gt", "--cams", "--cam-key", "cam", "--out", out, "--visualize", vis)
    assert result.exit_code == 0, result.output
    rep = json.loads(out.read_text())
    assert rep["cam_key"] == "cam" and rep["best_threshold"] == pytest.approx(0.60)
    for name in ("images/img.png", "per_class_iou.png", "cam_threshold_sweep.png"):
        assert (vis / name).stat().st_size > 100


def test_cli_cams_bad_files(tmp_path):
    _write_case(tmp_path)
    write_npz(tmp_path / "cams" / "img.npz", labels=np.array([2]), cam=np.zeros((1, 4, 4), np.float32))
    result = _run(tmp_path / "cams", tmp_path / "gt", "--cams")  # no "refined" saved
    assert result.exit_code == 2 and "no 'refined' array" in result.output
    write_npz(tmp_path / "cams" / "img.npz", labels=np.array([25]), refined=np.zeros((1, 4, 4), np.float32))
    result = _run(tmp_path / "cams", tmp_path / "gt", "--cams")
    assert result.exit_code == 2 and "not class indices 0..19" in result.output
    write_npz(tmp_path / "cams" / "img.npz", labels=np.array([2]), refined=np.zeros((1, 5, 4), np.float32))
    result = _run(tmp_path / "cams", tmp_path / "gt", "--cams")
    assert result.exit_code == 2 and "differs from the GT" in result.output
    assert "Traceback" not in result.output
