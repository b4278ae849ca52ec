"""`wsss-label reproduce voc|coco` on tiny dataset trees made here, with the random test weights.

The figures are meaningless (random CLIP) but every step must run; they are checked against a
second, plain implementation of the scoring (a confusion matrix per threshold, by loops).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.data.classes import load_class_set
from clipseg_cli.io.masks import load_label_map, save_mask
from tests.conftest import make_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOC = load_class_set("voc").classes
COCO = load_class_set("coco").classes


def gt_map(shape: tuple[int, int], values: list[int]) -> np.ndarray:
    """Background with one horizontal band per value, and a void (255) top row."""
    h, w = shape
    gt = np.zeros(shape, np.uint8)
    for k, v in enumerate(values):
        gt[k * h // 3 : (k + 2) * h // 3, w // 4 : 3 * w // 4] = v
    gt[0, :] = 255
    return gt


def make_voc(root: Path) -> dict[str, list[str]]:
    """VOCdevkit/VOC2012 layout; train.txt lists two of the three images. Returns the labels."""
    specs = {"2007_000001": ((40, 56), ["cat", "person"]), "2007_000002": ((48, 40), ["dog"]),
             "2007_000003": ((36, 36), ["car"])}  # fmt: skip
    (root / "Annotations").mkdir(parents=True)
    for i, (stem, (shape, names)) in enumerate(specs.items()):
        make_image(root / "JPEGImages" / f"{stem}.jpg", shape, seed=i)
        save_mask(root / "SegmentationClass" / f"{stem}.png", gt_map(shape, [1 + VOC.index(n) for n in names]))
        objects = "".join(f"<object><name>{n}</name></object>" for n in names)
        (root / "Annotations" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{objects}</annotation>")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n2007_000002\n")
    return {stem: names for stem, (_, names) in specs.items()}


def miou(pairs: list[tuple[np.ndarray, np.ndarray]], n: int) -> float:
    """Plain mIoU: one confusion matrix over all images (GT 255 and predicted 255 left out),
    mean IoU over the classes present in the GT."""
    conf = np.zeros((n, n), np.int64)
    for gt, pred in pairs:
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != 255 and p != 255:
                conf[g, p] += 1
    ious = [conf[c, c] / (conf[c, :].sum() + conf[:, c].sum() - conf[c, c]) for c in range(n) if conf[c, :].sum()]
    return float(np.mean(ious))


def best_cam_miou(out: Path, gt: Path, stems: list[str], key: str, n: int) -> tuple[float, float]:
    """Best mIoU over t = 0.05..0.95 of 'background where every CAM < t, else 1 + label of the largest'."""
    best = (-1.0, 0.0)
    for t in [round(0.05 * i, 2) for i in range(1, 20)]:
        pairs = []
        for stem in stems:
            data = np.load(out / "cams" / f"{stem}.npz")
            cams, labels = data[key], data["labels"]
            pred = np.where(cams.max(axis=0) >= np.float32(t), 1 + labels[cams.argmax(axis=0)], 0).astype(np.uint8)
            pairs.append((load_label_map(gt / f"{stem}.png"), pred))
        score = miou(pairs, n)
        if score > best[0]:
            best = (score, t)
    return best


@pytest.fixture
def reproduce(cli, golden_weights: Path):
    def _run(dataset: str, root: Path, out: Path, *extra: str | Path):
        return cli("reproduce", dataset, "--root", root, "--out", out, "--weights", golden_weights,
                   "--device", "cpu", "--workers", "0", *extra)  # fmt: skip

    return _run


def test_reproduce_voc_runs_every_step_and_writes_the_table(tmp_path: Path, reproduce):
    root = tmp_path / "VOC2012"
    labels = make_voc(root)
    out = tmp_path / "out"

    result = reproduce("voc", root, out)

    assert result.exit_code == 0, result.output
    stems = ["2007_000001", "2007_000002"]
    assert sorted(p.stem for p in (out / "masks").iterdir()) == stems  # only the split's images
    assert sorted(p.stem for p in (out / "cams").iterdir()) == stems  # CAMs kept
    run = json.loads((out / "run.json").read_text())
    assert {e["image"]: e["labels"] for e in run["images"]} == {f"{s}.jpg": labels[s] for s in stems}
    assert run["settings"]["mu"] == 0.0 and run["settings"]["templates"] == ["a clean origami {}."]

    table = json.loads((out / "reproduce.json").read_text())
    rows = {row["key"]: row for row in table["rows"]}
    assert [rows[k]["paper"] for k in ("cam", "refined", "masks")] == [0.586, 0.708, 0.750]
    gt = root / "SegmentationClass"
    n = 1 + len(VOC)
    for key in ("cam", "refined"):
        score, threshold = best_cam_miou(out, gt, stems, key, n)
        assert rows[key]["miou"] == pytest.approx(score, abs=1e-12) and rows[key]["best_threshold"] == threshold
    masks = [(load_label_map(gt / f"{s}.png"), load_label_map(out / "masks" / f"{s}.png")) for s in stems]
    assert all(255 not in m for _, m in masks)  # mu 0: the CRF's label everywhere, as the paper scores it
    assert rows["masks"]["miou"] == pytest.approx(miou(masks, n), abs=1e-12)
    totals = [e["seconds"]["total"] for e in run["images"]]
    assert table["seconds_per_image"]["ours"]["total"] == pytest.approx(np.mean(totals), abs=1e-4)
    assert table["seconds_per_image"]["paper"] == pytest.approx(0.6 * 3600 / 10582, abs=1e-3)
    assert table["images"] == {"listed": 2, "scored": 2, "no_ground_truth": [], "no_labels": [], "no_mask": []}

    markdown = (out / "reproduce.md").read_text()
    for step, key in (("| CAM |", "cam"), ("| +CAA |", "refined"), ("| +CRF (pseudo masks) |", "masks")):
        line = next(ln for ln in markdown.splitlines() if ln.startswith(step))
        assert f"| {100 * rows[key]['miou']:.1f} | {100 * rows[key]['paper']:.1f} |" in line
    assert "58.6" in result.output and "70.8" in result.output and "75.0" in result.output

    # a rerun resumes: nothing is labelled again, the table is made again with the same figures
    stamp = (out / "masks" / "2007_000001.png").stat().st_mtime_ns
    again = reproduce("voc", root, out)
    assert again.exit_code == 0, again.output
    assert "0 labelled, 2 already done" in again.output
    assert (out / "masks" / "2007_000001.png").stat().st_mtime_ns == stamp
    assert json.loads((out / "reproduce.json").read_text())["rows"] == table["rows"]


def test_reproduce_coco_takes_labels_from_the_label_pngs(tmp_path: Path, reproduce):
    root = tmp_path / "COCO2014"
    values = {"COCO_train2014_000000000009": [1, 18], "COCO_train2014_000000000025": [80],
              "COCO_train2014_000000000030": []}  # fmt: skip
    for i, (stem, vals) in enumerate(values.items()):
        make_image(root / "JPEGImages" / "train2014" / f"{stem}.jpg", (40, 48), seed=i)
        save_mask(root / "SegmentationClass" / "train2014" / f"{stem}.png", gt_map((40, 48), vals))
    out = tmp_path / "out"

    result = reproduce("coco", root, out)

    assert result.exit_code == 0, result.output
    # label 1 + c is COCO class c: 1 person, 18 horse, 80 toothbrush; an all-background map has none
    assert json.loads((out / "labels.train.json").read_text()) == {
        "COCO_train2014_000000000009": ["person", "horse"],
        "COCO_train2014_000000000025": ["toothbrush"],
        "COCO_train2014_000000000030": [],
    }
    assert [COCO[0], COCO[17], COCO[79]] == ["person", "horse", "toothbrush"]
    table = json.loads((out / "reproduce.json").read_text())
    assert table["images"]["scored"] == 2 and table["images"]["no_labels"] == ["COCO_train2014_000000000030"]
    assert [row["paper"] for row in table["rows"]] == [None, None, None]  # the paper gives none for COCO train
    stems = ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]
    masks = [(load_label_map(root / "SegmentationClass" / "train2014" / f"{s}.png"), load_label_map(out / "masks" / f"{s}.png"))
             for s in stems]  # fmt: skip
    assert table["rows"][2]["miou"] == pytest.approx(miou(masks, 1 + len(COCO)), abs=1e-12)
    assert "| +CRF (pseudo masks) |" in (out / "reproduce.md").read_text()


def test_reproduce_names_the_missing_part_of_the_layout(tmp_path: Path, reproduce):
    root = tmp_path / "VOC2012"
    make_voc(root)
    (root / "ImageSets" / "Segmentation" / "train.txt").unlink()
    result = reproduce("voc", root, tmp_path / "out")
    assert result.exit_code == 2
    assert "VOC split list for --split train not found" in result.output and "Traceback" not in result.output
    coco = reproduce("coco", tmp_path / "empty", tmp_path / "out")
    assert coco.exit_code == 2 and "COCO folder (--root) not found" in coco.output
    assert not (tmp_path / "out").exists()
