"""`wsss-label report`: incremental builds, the process pool, bad input, a real run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.io.masks import save_mask
from clipseg_cli.report import build, build_report
from clipseg_cli.report.builder import INLINE_BELOW
from tests.conftest import make_image, write_labels
from tests.test_report_data import fake_run, page_json


def _specs(n: int, size: tuple[int, int] = (12, 16)) -> dict:
    rng = np.random.default_rng(0)
    specs = {}
    for i in range(n):
        mask = rng.integers(0, 3, size).astype(np.uint8)
        mask[0, :] = 255
        specs[f"d{i % 3}/img{i:03d}.jpg"] = {
            "mask": mask,
            "labels": ["cat", "dog"],
            "confidence": np.full(size, 0.5 + i / (2 * n)),
            "seconds": {"cam": 0.1, "crf": 0.2, "total": 0.3},
        }
    return specs


def _touch_later(path: Path) -> None:
    """Give ``path`` a modification time clearly after its current one."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_incremental_rebuild(tmp_path: Path) -> None:
    out = fake_run(tmp_path, _specs(5))
    first = build(out, workers=1)
    assert first.rendered == 5 and first.computed == 5
    thumbs = {p: p.stat().st_mtime_ns for p in (out / "report" / "thumbs").rglob("*.jpg")}
    assert len(thumbs) == 5

    again = build(out, workers=1)
    assert again.rendered == 0 and again.computed == 0  # nothing re-rendered, nothing re-read
    assert {p: p.stat().st_mtime_ns for p in thumbs} == thumbs

    # A changed mask re-renders that image only, and its new statistics reach the page.
    changed = out / "masks" / "d1" / "img001.png"
    save_mask(changed, np.full((12, 16), 255, np.uint8))
    _touch_later(changed)
    third = build(out, workers=1)
    assert third.rendered_stems == ["d1/img001"] and third.computed == 1
    row = next(r for r in page_json(third.index)["images"] if r["stem"] == "d1/img001")
    assert row["ignored"] == 1.0
    others = {p: t for p, t in thumbs.items() if p.name != "img001.jpg"}
    assert {p: p.stat().st_mtime_ns for p in others} == others

    # A changed photo re-renders the picture but keeps the statistics; a deleted thumbnail comes back.
    _touch_later(tmp_path / "images" / "d2" / "img002.jpg")
    (out / "report" / "thumbs" / "d0" / "img000.jpg").unlink()
    fourth = build(out, workers=1)
    assert sorted(fourth.rendered_stems) == ["d0/img000", "d2/img002"] and fourth.computed == 0

    # An image gone from run.json is dropped, with its thumbnail.
    run = json.loads((out / "run.json").read_text())
    run["images"] = [e for e in run["images"] if e["image"] != "d2/img002.jpg"]
    (out / "run.json").write_text(json.dumps(run))
    fifth = build(out, workers=1)
    assert fifth.rendered == 0 and fifth.n_images == 4
    assert not (out / "report" / "thumbs" / "d2" / "img002.jpg").exists()


def test_process_pool_matches_in_process(tmp_path: Path) -> None:
    n = INLINE_BELOW + 4  # enough images for the pool
    out = fake_run(tmp_path / "a", _specs(n))
    pooled = build(out, workers=2)
    assert pooled.rendered == n
    inline = build(fake_run(tmp_path / "b", _specs(n)), workers=1)
    assert [r["stem"] for r in pooled.records] == [r["stem"] for r in inline.records]
    for a, b in zip(pooled.records, inline.records):
        assert a == b
    assert build(out, workers=2).rendered == 0


def test_limit_renders_only_the_shown(tmp_path: Path) -> None:
    out = fake_run(tmp_path, _specs(6))
    result = build(out, limit=2, workers=1)
    # confidence rises with the index: images 0 and 1 are the worst
    assert [r["stem"] for r in result.records] == ["d0/img000", "d1/img001"]
    assert sorted(result.rendered_stems) == ["d0/img000", "d1/img001"] and result.computed == 6
    assert result.n_images == 6 and len(page_json(result.index)["images"]) == 2
    assert sorted(p.name for p in (out / "report" / "thumbs").rglob("*.jpg")) == ["img000.jpg", "img001.jpg"]


def test_missing_photos_and_other_image_folder(tmp_path: Path) -> None:
    out = fake_run(tmp_path, _specs(2))
    moved = tmp_path / "moved"
    (tmp_path / "images").rename(moved)
    result = build(out, workers=1)
    assert any("not found" in w for w in result.warnings)
    assert all(r["photo"] is None for r in result.records)
    found = build(out, images=moved, workers=1)
    assert found.rendered == 2 and all(r["photo"] == "orig" for r in found.records)
    assert page_json(found.index)["photo_base"] == "../../moved/"


def test_non_voc_masks_get_a_rendered_overlay(tmp_path: Path) -> None:
    from PIL import Image

    out = fake_run(tmp_path, _specs(1))
    mask = out / "masks" / "d0" / "img000.png"
    grey = np.asarray(Image.open(mask))
    Image.fromarray(grey, mode="L").save(mask)  # plain greyscale label map
    result = build(out, workers=1)
    assert result.records[0]["overlay"] == "png"
    assert (out / "report" / "overlays" / "d0" / "img000.png").is_file()


@pytest.mark.parametrize(
    "setup, message",
    [
        ("nothing", "does not exist"),
        ("no_run_json", "has no run.json"),
        ("no_masks", "has no masks/ folder"),
        ("bad_json", "is not valid JSON"),
        ("missing_mask", "have no mask"),
        ("bad_mask", "cannot read label map"),
        ("bad_cams", "cannot read CAMs"),
        ("label_outside", "outside 0..3 and 255"),
        ("gt_size", "shape"),
        ("gt_empty", "holds no .png label maps"),
        ("limit", "--limit must be at least 1"),
        ("iou_without_gt", "--sort iou needs --gt"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, cli, setup: str, message: str) -> None:
    out = tmp_path / "run" / "out"
    args: list[str] = []
    if setup != "nothing":
        out = fake_run(tmp_path / "run", _specs(2))
    stem = out / "masks" / "d0" / "img000"
    if setup == "no_run_json":
        (out / "run.json").unlink()
    elif setup == "no_masks":
        import shutil

        shutil.rmtree(out / "masks")
    elif setup == "bad_json":
        (out / "run.json").write_text("{not json")
    elif setup == "missing_mask":
        stem.with_suffix(".png").unlink()
    elif setup == "bad_mask":
        stem.with_suffix(".png").write_bytes(b"not a png")
    elif setup == "bad_cams":
        (out / "cams" / "d0" / "img000.npz").write_bytes(b"garbage")
    elif setup == "label_outside":
        save_mask(stem.with_suffix(".png"), np.full((12, 16), 7, np.uint8))
    elif setup == "gt_size":
        save_mask(tmp_path / "gt" / "d0" / "img000.png", np.zeros((3, 3), np.uint8))
        args = ["--gt", str(tmp_path / "gt")]
    elif setup == "gt_empty":
        (tmp_path / "gt").mkdir()
        args = ["--gt", str(tmp_path / "gt")]
    elif setup == "limit":
        args = ["--limit", "0"]
    elif setup == "iou_without_gt":
        args = ["--sort", "iou"]
    result = cli("report", out, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output


def test_report_of_a_real_run(tmp_path: Path, cli, golden_weights: Path, one_torch_thread) -> None:
    """The main command with the tiny random CLIP, then `wsss-label report` on its folder."""
    images = tmp_path / "images"
    make_image(images / "a.jpg", (40, 56), seed=1)
    make_image(images / "sub" / "b.png", (48, 40), seed=2)
    labels = write_labels(tmp_path / "labels.json", {"a.jpg": ["cat", "person"], "sub/b.png": ["dog"]})
    out = tmp_path / "out"
    done = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--save-cams")
    assert done.exit_code == 0, done.output
    gt = tmp_path / "gt"
    save_mask(gt / "a.png", np.zeros((40, 56), np.uint8))

    started = time.perf_counter()
    result = cli("report", out, "--gt", gt)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and "2 images" in result.output
    data = page_json(out / "report" / "index.html")
    run = json.loads((out / "run.json").read_text())
    assert sorted(r["image"] for r in data["images"]) == sorted(e["image"] for e in run["images"])
    by_name = {r["image"]: r for r in data["images"]}
    cat, person, dog = (1 + data["classes"][1:].index(n) for n in ("cat", "person", "dog"))
    assert by_name["a.jpg"]["labels"] == [cat, person] and by_name["sub/b.png"]["labels"] == [dog]
    for r in data["images"]:
        assert r["confidence"] is not None and 0 < r["confidence"] <= 1  # the CRF ran: cams hold confidence
        assert r["seconds"] and r["seconds"]["total"] > 0
        assert sum(a for _, a in r["areas"]) + r["ignored"] == pytest.approx(1.0)
    assert by_name["a.jpg"]["has_gt"] and by_name["a.jpg"]["iou"] is not None
    assert not by_name["sub/b.png"]["has_gt"]
    confidences = [r["confidence"] for r in data["images"]]
    assert confidences == sorted(confidences)  # worst first
    assert time.perf_counter() - started < 30

    # The Python entry point the main command's --report calls.
    assert build_report(out) == out / "report" / "index.html"
