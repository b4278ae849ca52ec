"""Confusion matrix and metrics of `wsss-label eval`, on cases computed by hand."""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.evaluation.confusion import (
    ConfusionAccumulator,
    LabelRangeError,
    confusion_matrix,
    metrics_from_confusion,
)
from clipseg_cli.io.masks import save_mask

V = 255  # void

# A 4x4 case with classes "cat,dog" (labels 0 = background, 1 = cat, 2 = dog).
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, V, V],
        [2, 2, 0, 0],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 0, 1, V],
        [2, 0, 2, 2],
        [2, 2, 0, 0],
    ],
    dtype=np.uint8,
)
# Valid GT pixels: 14 (two GT-void pixels dropped). Pairs (gt, pred):
#   gt 0: (0,0) x5, (0,1) x1           -> 6 pixels
#   gt 1: (1,1) x3, (1,255) x1         -> 4 pixels, one predicted 255
#   gt 2: (2,2) x3, (2,0) x1           -> 4 pixels
# exclude:    C = [[5,1,0],[0,3,0],[1,0,3]]
#   IoU bg = 5/(6+6-5) = 5/7, cat = 3/(3+4-3) = 3/4, dog = 3/(4+3-3) = 3/4
#   mIoU = (5/7 + 3/4 + 3/4)/3 = 31/42; pixel accuracy = 11/13; ignored = 1/14
# background: C = [[5,1,0],[1,3,0],[1,0,3]]
#   IoU bg = 5/(6+7-5) = 5/8, cat = 3/(4+4-3) = 3/5, dog = 3/4
#   mIoU = (5/8 + 3/5 + 3/4)/3 = 79/120; pixel accuracy = 11/14; ignored = 1/14
EXCLUDE_C = [[5, 1, 0], [0, 3, 0], [1, 0, 3]]
BACKGROUND_C = [[5, 1, 0], [1, 3, 0], [1, 0, 3]]


def _eval(tmp_path: Path, gts: dict[str, np.ndarray], preds: dict[str, np.ndarray], *args: str):
    for key, arr in gts.items():
        save_mask(tmp_path / "gt" / f"{key}.png", arr)
    for key, arr in preds.items():
        save_mask(tmp_path / "pred" / f"{key}.png", arr)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["eval", str(tmp_path / "pred"), str(tmp_path / "gt"), "--out", str(report), *args])
    data = json.loads(report.read_text()) if report.exists() else None
    return result, data


def test_confusion_matrix_by_hand_both_ignore_modes():
    assert confusion_matrix(GT, PRED, 3, "exclude").tolist() == EXCLUDE_C
    assert confusion_matrix(GT, PRED, 3, "background").tolist() == BACKGROUND_C
    m = metrics_from_confusion(np.array(EXCLUDE_C))
    assert m.iou == pytest.approx([5 / 7, 3 / 4, 3 / 4], abs=1e-12)
    assert m.precision == pytest.approx([5 / 6, 3 / 4, 3 / 3], abs=1e-12)
    assert m.recall == pytest.approx([5 / 6, 3 / 3, 3 / 4], abs=1e-12)
    assert m.miou == pytest.approx(31 / 42, abs=1e-12)
    assert m.pixel_accuracy == pytest.approx(11 / 13, abs=1e-12)


def test_cli_hand_case_exclude(tmp_path):
    result, rep = _eval(tmp_path, {"a": GT}, {"a": PRED}, "--classes", "cat,dog")
    assert result.exit_code == 0, result.output
    assert rep["miou"] == pytest.approx(31 / 42, abs=1e-12)
    assert rep["pixel_accuracy"] == pytest.approx(11 / 13, abs=1e-12)
    assert rep["ignored_fraction"] == pytest.approx(1 / 14, abs=1e-12)
    assert rep["n_images"] == 1
    assert rep["pred_ignore"] == "exclude"
    assert list(rep["per_class"]) == ["background", "cat", "dog"]
    assert rep["per_class"]["cat"]["iou"] == pytest.approx(3 / 4)
    assert rep["per_class"]["cat"]["recall"] == pytest.approx(1.0)
    assert rep["per_class"]["dog"]["precision"] == pytest.approx(1.0)
    assert rep["confusion_matrix"] == EXCLUDE_C
    assert "mIoU 73.81%" in result.output  # 31/42 = 0.738095...


def test_cli_hand_case_pred_ignore_background(tmp_path):
    result, rep = _eval(tmp_path, {"a": GT}, {"a": PRED}, "--classes", "cat,dog", "--pred-ignore", "background")
    assert result.exit_code == 0, result.output
    assert rep["miou"] == pytest.approx(79 / 120, abs=1e-12)
    assert rep["pixel_accuracy"] == pytest.approx(11 / 14, abs=1e-12)
    # The fraction of valid GT pixels predicted 255 is reported in both modes.
    assert rep["ignored_fraction"] == pytest.approx(1 / 14, abs=1e-12)
    assert rep["pred_ignore"] == "background"
    assert rep["confusion_matrix"] == BACKGROUND_C


def test_classes_absent_from_gt_are_not_averaged(tmp_path):
    pred = PRED.copy()
    pred[0, 1] = 3  # "cow": predicted once, never in the GT
    # C (exclude) = [[5,0,0,1],[0,3,0,0],[1,0,3,0],[0,0,0,0]]
    #   bg = 5/(6+6-5) = 5/7, cat = 3/(3+3-3) = 1, dog = 3/4, cow = 0/(0+1-0) = 0 (not averaged)
    #   mIoU = (5/7 + 1 + 3/4)/3 = 69/84 = 23/28; with cow averaged it would be 69/112.
    # "horse" is neither in the GT nor predicted: IoU undefined (null).
    result, rep = _eval(tmp_path, {"a": GT}, {"a": pred}, "--classes", "cat,dog,cow,horse")
    assert result.exit_code == 0, result.output
    assert rep["miou"] == pytest.approx(23 / 28, abs=1e-12)
    assert rep["n_classes_in_gt"] == 3
    cow, horse = rep["per_class"]["cow"], rep["per_class"]["horse"]
    assert cow["in_gt"] is False and cow["iou"] == 0.0 and cow["pred_pixels"] == 1
    assert horse["in_gt"] is False and horse["iou"] is None and horse["recall"] is None
    assert "cow (not in GT)" in result.output


def _independent_scores(pairs, n_labels, pred_ignore):
    """Plain-Python counting and Fraction arithmetic: no bincount, no shared code."""
    counts: Counter = Counter()
    ignored = valid = 0
    for gt, pred in pairs:
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g == 255:
                continue
            valid += 1
            if p == 255:
                ignored += 1
                if pred_ignore == "exclude":
                    continue
                p = 0
            counts[g, p] += 1
    ious = []
    for c in range(n_labels):
        tp = counts[c, c]
        gt_c = sum(counts[c, p] for p in range(n_labels))
        pred_c = sum(counts[g, c] for g in range(n_labels))
        if gt_c:
            ious.append(Fraction(tp, gt_c + pred_c - tp))
    total = sum(counts.values())
    correct = sum(counts[c, c] for c in range(n_labels))
    return {
        "miou": float(sum(ious) / len(ious)),
        "ious": ious,
        "pixel_accuracy": float(Fraction(correct, total)),
        "ignored_fraction": float(Fraction(ignored, valid)),
        "n_present": len(ious),
    }


@pytest.mark.parametrize("pred_ignore", ["exclude", "background"])
def test_random_masks_with_void_agree_with_independent_count(tmp_path, pred_ignore):
    rng = np.random.default_rng(7)
    n_labels = 6  # background + 5 classes; class 5 kept out of the GT
    gts, preds = {}, {}
    for i in range(3):
        h, w = 37 + i, 53
        gt = rng.integers(0, 5, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        pred = gt.copy()
        noise = rng.random((h, w)) < 0.4
        pred[noise] = rng.integers(0, n_labels, noise.sum())
        pred[rng.random((h, w)) < 0.1] = 255
        gts[f"sub/img{i}"] = gt
        preds[f"sub/img{i}"] = pred
    expected = _independent_scores([(gts[k], preds[k]) for k in gts], n_labels, pred_ignore)
    result, rep = _eval(tmp_path, gts, preds, "--classes", "a,b,c,d,e", "--pred-ignore", pred_ignore)
    assert result.exit_code == 0, result.output
    assert rep["n_images"] == 3
    assert rep["n_classes_in_gt"] == expected["n_present"] == 5
    assert abs(rep["miou"] - expected["miou"]) < 1e-9
    assert abs(rep["pixel_accuracy"] - expected["pixel_accuracy"]) < 1e-9
    assert abs(rep["ignored_fraction"] - expected["ignored_fraction"]) < 1e-9
    got = [rep["per_class"][n]["iou"] for n in ["background", "a", "b", "c", "d"]]
    assert got == pytest.approx([float(v) for v in expected["ious"]], abs=1e-12)


def test_accumulator_sums_images_and_rejects_unknown_labels():
    acc = ConfusionAccumulator(3)
    acc.add(GT, PRED)
    acc.add(GT, PRED)
    assert acc.matrix("exclude").tolist() == (2 * np.array(EXCLUDE_C)).tolist()
    assert acc.valid_pixels == 28 and acc.pred_ignored_pixels == 2
    bad = GT.copy()
    bad[0, 0] = 7
    with pytest.raises(LabelRangeError, match="GT has label values 7"):
        acc.add(bad, PRED)
    with pytest.raises(LabelRangeError, match="prediction has label values 7"):
        acc.add(GT, bad)
    with pytest.raises(ValueError, match="shape"):
        acc.add(GT, PRED[:3])
    assert acc.n_images == 2  # failed images were not counted
