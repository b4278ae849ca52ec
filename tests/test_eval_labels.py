"""`wsss-label eval-labels`: per-class precision, recall, F1 and AP of image-level labels, worked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.evaluation.label_metrics import average_precision

CLASSES = "cat,dog,bird"

# Four images. GT: i1 {cat}, i2 {cat, dog}, i3 {dog}, i4 {} (listed without labels).
GT = {"i1.jpg": ["cat"], "i2.jpg": ["cat", "dog"], "i3.jpg": ["dog"], "i4.jpg": []}
# Predictions as --labels auto writes them (PRED names images without extension, as GT may not).
PRED = {
    "i1": {"labels": ["cat"], "scores": {"cat": 0.9, "dog": 0.2, "bird": 0.05}, "background": 0.01},
    "i2": {"labels": ["dog"], "scores": {"dog": 0.8, "cat": 0.3, "bird": 0.01}, "background": 0.01},
    "i3": {"labels": ["dog", "bird"], "scores": {"dog": 0.6, "bird": 0.4, "cat": 0.1}, "background": 0.01},
    "i4": {"labels": ["cat"], "scores": {"cat": 0.5, "dog": 0.05, "bird": 0.02}, "background": 0.6},
    "only-pred": {"labels": ["cat"], "scores": {"cat": 0.9}, "background": 0.0},
}
# By hand:
#   cat:  predicted i1, i4; true i1, i2 -> TP 1, FP 1, FN 1: P 1/2, R 1/2, F1 2/(2+1+1) = 1/2.
#         AP: ranked i1 .9 (+), i4 .5 (-), i2 .3 (+), i3 .1 (-): (1/1 + 2/3) / 2 = 5/6.
#   dog:  predicted i2, i3; true i2, i3 -> TP 2: P = R = F1 = 1. AP: i2 .8 (+), i3 .6 (+) -> 1.
#   bird: predicted i3, never true -> TP 0, FP 1: P 0, R undefined, F1 0/(0+1) = 0; no AP.
#   all labels together: TP 3, FP 2, FN 1 -> P 3/5, R 3/4, F1 6/9; macro F1 over cat, dog = 3/4.
#   mAP over cat and dog = (5/6 + 1) / 2 = 11/12; exact label sets: i1 only -> 1/4.
# Sweep at t = 0.5: i1 {cat} (.9), i2 {dog} (.8), i3 {dog} (.6; bird .4 no), i4: cat .5 is not
#   above .5 and loses to the background .6 -> {}. TP 3 (i1 cat, i2 dog, i3 dog), FP 0, FN 1 (i2 cat)
#   -> P 1, R 3/4, F1 6/7.


def test_average_precision_groups_equal_scores():
    # scores .5 (+), .5 (-), .2 (+): the two .5s enter together: P 1/2 at R 1/2, then P 2/3 at R 1
    assert average_precision(np.array([0.5, 0.5, 0.2]), np.array([True, False, True])) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.1, 0.9]), np.array([False, False])) is None


def test_eval_labels_by_hand(tmp_path: Path, cli):
    pred = tmp_path / "labels.auto.json"
    pred.write_text(json.dumps(PRED))
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({**GT, "only-gt.jpg": ["dog"]}))
    report_path = tmp_path / "report.json"

    result = cli("eval-labels", pred, gt, "--classes", CLASSES, "--out", report_path)

    assert result.exit_code == 0, result.output
    r = json.loads(report_path.read_text())
    assert r["n_images"] == 4 and r["only_in_pred"] == 1 and r["only_in_gt"] == 1
    cat, dog, bird = (r["per_class"][c] for c in ("cat", "dog", "bird"))
    assert (cat["tp"], cat["predicted"], cat["positives"]) == (1, 2, 2)
    assert cat["precision"] == pytest.approx(0.5) and cat["recall"] == pytest.approx(0.5) and cat["f1"] == pytest.approx(0.5)
    assert cat["ap"] == pytest.approx(5 / 6)
    assert dog["precision"] == dog["recall"] == dog["f1"] == dog["ap"] == pytest.approx(1.0)
    assert bird["precision"] == 0.0 and bird["recall"] is None and bird["f1"] == 0.0 and bird["ap"] is None
    assert r["precision"] == pytest.approx(3 / 5) and r["recall"] == pytest.approx(3 / 4) and r["f1"] == pytest.approx(6 / 9)
    assert r["macro_f1"] == pytest.approx(3 / 4)
    assert r["map"] == pytest.approx(11 / 12) and r["n_classes_with_positives"] == 2
    assert r["exact_match"] == pytest.approx(1 / 4)
    at_half = next(row for row in r["sweep"] if row["threshold"] == 0.5)
    assert at_half["precision"] == pytest.approx(1.0) and at_half["recall"] == pytest.approx(3 / 4)
    assert at_half["f1"] == pytest.approx(6 / 7)
    assert r["best_threshold"] == max(r["sweep"], key=lambda row: row["f1"])["threshold"]
    assert "mAP 91.7%" in result.output


def test_eval_labels_plain_label_lists_and_voc_annotations(tmp_path: Path, cli):
    # PRED without scores: its labels score 1, the rest 0. GT as VOC XML files.
    pred = tmp_path / "pred.txt"
    pred.write_text("a.jpg cat\nb.jpg dog\n")
    xml = tmp_path / "Annotations"
    xml.mkdir()
    for stem, names in {"a": ["cat", "dog"], "b": ["dog"]}.items():
        objects = "".join(f"<object><name>{n}</name></object>" for n in names)
        (xml / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{objects}</annotation>")

    result = cli("eval-labels", pred, xml, "--classes", CLASSES, "--out", "-")

    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout[result.stdout.index("{") :])
    # cat: a (+, score 1), b (-, 0) -> AP 1; dog: b (+, 1), a (+, 0): P 1 at R 1/2, then 2/2 -> AP 1
    # dog recall: TP b, FN a -> 1/2
    assert r["per_class"]["cat"]["ap"] == pytest.approx(1.0) and r["per_class"]["dog"]["ap"] == pytest.approx(1.0)
    assert r["per_class"]["dog"]["recall"] == pytest.approx(0.5)
    assert "sweep" not in r  # no scores, no threshold to sweep


@pytest.mark.parametrize(
    ("pred", "gt", "message"),
    [
        ({"a.jpg": ["lion"]}, {"a.jpg": ["cat"]}, "unknown class 'lion'"),
        ({"a.jpg": ["cat"]}, {"b.jpg": ["cat"]}, "name no image in common"),
    ],
)
def test_eval_labels_bad_input_is_one_line(tmp_path: Path, cli, pred, gt, message):
    (tmp_path / "p.json").write_text(json.dumps(pred))
    (tmp_path / "g.json").write_text(json.dumps(gt))
    result = cli("eval-labels", tmp_path / "p.json", tmp_path / "g.json", "--classes", CLASSES)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
