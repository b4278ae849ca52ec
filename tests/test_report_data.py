"""`wsss-label report`: the data the page is built from (records, sorting, filters, IoU).

Also holds ``fake_run``, a hand-made run folder (photos, masks, cams, run.json) that the
other report tests import.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.evaluation.matching import pair_files
from clipseg_cli.evaluation.runner import evaluate_masks
from clipseg_cli.io.atomic import write_npz
from clipseg_cli.io.masks import save_mask
from clipseg_cli.report import build, records
from clipseg_cli.report.page import embed_json

CLASSES = ["cat", "dog", "person"]  # mask values 1, 2, 3


def fake_run(
    root: Path,
    specs: dict[str, dict[str, Any]],
    class_names: list[str] | None = None,
    failed: list[dict[str, str]] | None = None,
) -> Path:
    """A run folder as the main command writes it. ``specs``: image path -> ``mask`` (uint8
    array), ``labels`` (names), optional ``confidence`` (array; saved in cams/*.npz) and
    ``seconds``. Photos are smooth random pictures of the mask's size. Returns OUT."""
    names = class_names or CLASSES
    images, out = root / "images", root / "out"
    entries = []
    for k, (rel, spec) in enumerate(specs.items()):
        stem = posixpath.splitext(rel)[0]
        mask = np.asarray(spec["mask"], dtype=np.uint8)
        h, w = mask.shape
        rng = np.random.default_rng(k)
        base = rng.integers(0, 255, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR).save(images / rel)
        save_mask(out / "masks" / f"{stem}.png", mask)
        labels = np.array([names.index(n) for n in spec["labels"]], dtype=np.int64)
        if spec.get("confidence") is not None:
            write_npz(out / "cams" / f"{stem}.npz", labels=labels, confidence=np.asarray(spec["confidence"], np.float16))
        entries.append({"image": rel, "labels": list(spec["labels"]), "seconds": spec.get("seconds")})
    run = {
        "tool": "wsss-label",
        "finished_at": "2026-01-01T00:00:00+00:00",
        "interrupted": False,
        "settings": {"images": str(images), "classes": ",".join(names), "class_names": names, "mu": 0.95, "crf": True},
        "images": entries,
        "skipped": [{"image": "nolabel.jpg", "reason": "empty label list"}],
        "failed": failed if failed is not None else [{"image": "broken.jpg", "reason": "not a readable image"}],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(run))
    return out


def page_json(index: Path) -> dict[str, Any]:
    """The JSON data embedded in index.html."""
    html = index.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.DOTALL)
    assert match, "no embedded data"
    return json.loads(match.group(1))


# A 3x4 prediction and its GT (3 labels: background, cat, dog) whose scores are worked out by
# hand below.
PRED = np.array([[0, 1, 1, 1], [0, 0, 1, 255], [0, 2, 2, 0]], dtype=np.uint8)
GT = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [255, 2, 2, 2]], dtype=np.uint8)


def test_mask_stats_by_hand() -> None:
    conf = np.full((3, 4), 0.5, dtype=np.float16)
    conf[0] = 1.0
    stats = records.mask_stats(PRED, n_labels=3, confidence=conf)
    assert stats["size"] == [4, 3]
    assert stats["ignored"] == pytest.approx(1 / 12)
    # background 5 px, cat 4 px, dog 2 px, largest first
    assert stats["areas"] == [[0, pytest.approx(5 / 12)], [1, pytest.approx(4 / 12)], [2, pytest.approx(2 / 12)]]
    assert records.foreground(stats["areas"]) == pytest.approx(6 / 12)
    assert stats["confidence"] == pytest.approx(8 / 12)  # (4 x 1.0 + 8 x 0.5) / 12
    assert records.mask_stats(PRED, n_labels=3)["confidence"] is None


def test_mask_stats_rejects_labels_outside_the_classes() -> None:
    with pytest.raises(records.LabelValueError, match="label values 2 outside 0..1"):
        records.mask_stats(PRED, n_labels=2)


def test_per_image_iou_by_hand() -> None:
    # Counted pixels: GT 255 at (2,0) never; predicted 255 at (1,3) left out (as eval does).
    # background: TP 3, GT 4, predicted 4 -> 3/5; cat: TP 3, GT 3, pred 4 -> 3/4;
    # dog: TP 2, GT 3, pred 2 -> 2/3.
    scored = records.gt_stats(PRED, GT, n_labels=3)
    assert scored["iou"] == pytest.approx((3 / 5 + 3 / 4 + 2 / 3) / 3)
    # A perfect prediction scores 1; a class missing from the GT is not averaged.
    assert records.gt_stats(GT, GT, n_labels=3)["iou"] == pytest.approx(1.0)
    only_bg = np.zeros((2, 2), np.uint8)
    assert records.gt_stats(np.array([[0, 0], [0, 1]], np.uint8), only_bg, 2)["iou"] == pytest.approx(3 / 4)


def test_run_confusion_is_evals(tmp_path: Path) -> None:
    """The summary's mIoU table is eval's report, summed from per-image sparse histograms."""
    rng = np.random.default_rng(3)
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    hists = []
    for k in range(3):
        gt = rng.integers(0, 3, (6, 7)).astype(np.uint8)
        gt[0, :2] = 255
        pred = np.where(rng.random((6, 7)) < 0.7, gt, rng.integers(0, 3, (6, 7))).astype(np.uint8)
        pred[5, 5] = 255
        save_mask(pred_dir / f"{k}.png", pred)
        save_mask(gt_dir / f"{k}.png", gt)
        hists.append(records.gt_stats(pred, gt, 3)["hist"])
    names = ["background", "cat", "dog"]
    ours = records.gt_report(hists + [None], names)
    theirs = evaluate_masks(pair_files(pred_dir, gt_dir), names[1:])
    assert ours == theirs
    assert records.gt_report([None], names) is None


def _rec(name: str, conf: float | None, ignored: float, fg: float, labels: list[int], iou: float | None = None) -> dict:
    return {
        "image": name,
        "confidence": conf,
        "ignored": ignored,
        "foreground": fg,
        "labels": labels,
        "iou": iou,
        "seconds": {"total": fg},
    }


RECS = [
    _rec("d.jpg", 0.9, 0.10, 0.5, [1]),
    _rec("a.jpg", None, 0.30, 0.2, [2]),
    _rec("c.jpg", 0.5, 0.30, 0.7, [1, 3], iou=0.4),
    _rec("b.jpg", 0.7, 0.00, 0.2, [3], iou=0.9),
]


def _names(recs: list[dict]) -> list[str]:
    return [r["image"] for r in recs]


def test_sorting_worst_first_missing_last() -> None:
    assert _names(records.sort_records(RECS, "confidence")) == ["c.jpg", "b.jpg", "d.jpg", "a.jpg"]
    assert _names(records.sort_records(RECS, "confidence", descending=True)) == ["d.jpg", "b.jpg", "c.jpg", "a.jpg"]
    # ties keep name order, in both directions
    assert _names(records.sort_records(RECS, "ignored")) == ["a.jpg", "c.jpg", "d.jpg", "b.jpg"]
    assert _names(records.sort_records(RECS, "ignored", descending=False)) == ["b.jpg", "d.jpg", "a.jpg", "c.jpg"]
    assert _names(records.sort_records(RECS, "area")) == ["a.jpg", "b.jpg", "d.jpg", "c.jpg"]
    assert _names(records.sort_records(RECS, "name")) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert _names(records.sort_records(RECS, "iou")) == ["c.jpg", "b.jpg", "a.jpg", "d.jpg"]
    assert _names(records.sort_records(RECS, "seconds")) == ["c.jpg", "d.jpg", "a.jpg", "b.jpg"]
    with pytest.raises(ValueError):
        records.sort_records(RECS, "colour")


def test_filters_and_histograms() -> None:
    assert _names(records.filter_by_class(RECS, 1)) == ["d.jpg", "c.jpg"]
    assert _names(records.filter_by_class(RECS, 2)) == ["a.jpg"]
    assert records.class_histogram(RECS, 4) == [0, 2, 1, 2]
    hist = records.ignored_histogram(RECS + [_rec("e.jpg", 1.0, 1.0, 0.0, [])])
    assert len(hist) == 20 and sum(hist) == 5
    assert hist[0] == 1 and hist[2] == 1 and hist[6] == 2 and hist[19] == 1  # 0 %, 10 %, 30 % x2, 100 %
    assert records.confidence_histogram([_rec("x", None, 0, 0, [])]) is None
    assert sum(records.confidence_histogram(RECS)) == 3


def test_embedded_json_cannot_close_the_script() -> None:
    text = embed_json({"image": "a</script><script>alert(1)</script>.jpg"})
    assert "</" not in text and "<" not in text
    assert json.loads(text)["image"] == "a</script><script>alert(1)</script>.jpg"


def test_build_records_and_page_data(tmp_path: Path) -> None:
    """The records of a built report, checked against hand-computed values, are the page's data."""
    full = np.full((3, 4), 0.9, np.float16)
    out = fake_run(
        tmp_path,
        {
            "x.jpg": {
                "mask": PRED * (PRED != 2) + 3 * (PRED == 2),
                "labels": ["cat", "person"],
                "confidence": full,
                "seconds": {"cam": 1.0, "crf": 0.5, "total": 1.5},
            },
            "sub/y.png": {"mask": np.full((4, 6), 2, np.uint8), "labels": ["dog"], "confidence": np.full((4, 6), 0.6)},
            "z.jpg": {"mask": np.zeros((5, 5), np.uint8), "labels": ["cat"]},  # no cams: confidence n/a
        },
    )
    gt_dir = tmp_path / "gt"
    save_mask(gt_dir / "x.png", np.where(GT == 2, 3, GT).astype(np.uint8))
    result = build(out, gt=gt_dir, workers=1)
    assert result.index == out / "report" / "index.html" and result.index.is_file()
    assert [r["image"] for r in result.records] == ["sub/y.png", "x.jpg", "z.jpg"]  # lowest confidence first
    y, x, z = result.records
    assert y["labels"] == [2] and y["areas"] == [[2, 1.0]] and y["ignored"] == 0.0 and y["foreground"] == 1.0
    assert y["confidence"] == pytest.approx(0.6, abs=1e-3) and y["seconds"] is None and y["size"] == [6, 4]
    assert x["labels"] == [1, 3] and x["ignored"] == pytest.approx(1 / 12) and x["foreground"] == pytest.approx(0.5)
    assert {k: v for k, v in x["areas"]} == pytest.approx({0: 5 / 12, 1: 4 / 12, 3: 2 / 12})
    assert x["seconds"] == {"cam": 1.0, "crf": 0.5, "total": 1.5}
    assert x["iou"] == pytest.approx((3 / 5 + 3 / 4 + 2 / 3) / 3) and x["has_gt"]
    assert z["confidence"] is None and z["iou"] is None and not z["has_gt"] and z["foreground"] == 0.0
    assert all(r["photo"] == "orig" and r["overlay"] == "mask" for r in result.records)
    assert result.gt is not None and result.gt["n_images"] == 1

    data = page_json(result.index)
    assert data["images"] == json.loads(json.dumps(result.records))
    assert data["classes"] == ["background", "cat", "dog", "person"]
    assert data["colours"][:2] == ["#000000", "#800000"]  # VOC palette
    assert data["sort"] == {"key": "confidence", "desc": False} and data["has_gt"] is True
    assert data["mask_base"] == "../masks/" and data["photo_base"] == "../../images/"
    html = result.index.read_text()
    assert "1 failed image(s)" in html and "broken.jpg" in html and "1 skipped image(s)" in html
    assert 'id="class-hist"' in html and 'id="ignored-hist"' in html and 'id="gt-table"' in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing loaded from a network
    for r in result.records:
        assert (out / "report" / "thumbs" / f"{r['stem']}.jpg").is_file()
    assert (out / "report" / "thumbs-gt" / "x.jpg").is_file() and (out / "report" / "overlays-gt" / "x.png").is_file()
    with Image.open(out / "report" / "thumbs" / "x.jpg") as thumb:  # photo | overlay, long side 256 each
        assert thumb.format == "JPEG" and thumb.size == (2 * 256 + 4, 192)

    # --sort and --limit: only the N worst get a row; the summary still counts all.
    limited = build(out, sort="ignored", limit=2, workers=1)
    assert [r["image"] for r in limited.records] == ["x.jpg", "sub/y.png"]
    assert limited.n_images == 3 and limited.n_shown == 2
    assert page_json(limited.index)["sort"] == {"key": "ignored", "desc": True}
