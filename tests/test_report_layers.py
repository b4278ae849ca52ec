"""The viewer's extra layers (issue 20, point 3): CAM heat maps from cams/*.npz and the error map
against the GT, their pictures, and how rebuilds keep them up to date."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_cli.io.atomic import write_npz
from clipseg_cli.io.masks import save_mask
from clipseg_cli.report import build, render
from clipseg_cli.report.cache import CACHE_FILE
from tests.test_report_data import fake_run, page_json


def _png(data: bytes) -> tuple[np.ndarray, list[int], bytes | None]:
    img = Image.open(io.BytesIO(data))
    assert img.mode == "P"
    return np.asarray(img), img.getpalette(), img.info.get("transparency")


def test_heat_png_is_the_cam_in_jet_colours() -> None:
    cam = np.array([[0.0, 0.5, 1.0], [1.5, -0.2, 0.25]], dtype=np.float32)  # out-of-range values are clipped
    index, palette, _ = _png(render.heat_png(cam))
    # by hand: round(clip(v, 0, 1) * 255)
    assert index.tolist() == [[0, 128, 255], [255, 0, 64]]
    # jet by its definition: index 0 dark blue, 255 dark red, the middle greenish (cv2's COLORMAP_JET)
    assert palette[0:3] == [0, 0, 128] and palette[3 * 255 : 3 * 256] == [128, 0, 0]
    r, g, b = palette[3 * 128 : 3 * 129]
    assert g > 200 and r < 200 and b < 200
    # A big CAM is drawn small: at most HEAT_SIDE on the long side, the aspect kept.
    big = np.tile(np.linspace(0, 1, 1000, dtype=np.float32), (600, 1))
    index, _, _ = _png(render.heat_png(big))
    assert index.shape == (96, 160)
    assert index[:, 0].max() < 5 and index[:, -1].min() > 250  # still a left-to-right ramp
    assert np.all(np.diff(index[48].astype(int)) >= 0)


def test_error_png_uses_evals_codes_with_correct_pixels_clear() -> None:
    gt = np.array([[0, 1, 1, 255], [2, 2, 0, 0]], dtype=np.uint8)
    mask = np.array([[0, 1, 2, 1], [2, 255, 0, 1]], dtype=np.uint8)
    # codes by hand: 0 correct, 1 wrong, 2 predicted 255, 3 GT void
    want = [[0, 0, 1, 3], [0, 2, 0, 1]]
    from clipseg_cli.evaluation.visualize import error_codes

    index, palette, alpha = _png(render.error_png(error_codes(gt, mask)))
    assert index.tolist() == want
    assert alpha[0] == 0 and min(alpha[1:4]) > 100  # correct clear, the others drawn
    assert palette[3:6] == [230, 30, 30] and palette[6:9] == [250, 200, 0]  # eval's wrong and left-out colours


def _run_with_cams(tmp_path: Path) -> tuple[Path, dict]:
    h, w = 30, 40
    specs = {}
    for k, (rel, labels) in enumerate([("x/one.jpg", ["cat", "dog"]), ("two.jpg", ["person"]), ("old.jpg", ["dog"])]):
        mask = np.zeros((h, w), np.uint8)
        mask[5:20, 5 + 10 * k : 15 + 10 * k] = 1 + ["cat", "dog", "person"].index(labels[0])
        mask[0, :] = 255
        specs[rel] = {"mask": mask, "labels": labels, "confidence": np.full((h, w), 0.9)}
    out = fake_run(tmp_path, specs)
    for rel in ("x/one.jpg", "two.jpg"):  # old.jpg keeps a cams file without CAM arrays (an older run)
        labels = np.array([["cat", "dog", "person"].index(n) for n in specs[rel]["labels"]], dtype=np.int64)
        cams = np.random.default_rng(1).random((len(labels), h, w), dtype=np.float32)
        write_npz(out / "cams" / f"{rel[:-4]}.npz", labels=labels, cam=cams, refined=cams / 2,
                  confidence=np.full((h, w), 0.9, np.float16))  # fmt: skip
    return out, specs


def test_build_draws_heat_maps_and_error_maps_and_keeps_them_current(tmp_path: Path) -> None:
    out, specs = _run_with_cams(tmp_path)
    gt_dir = tmp_path / "gt"
    gt = specs["two.jpg"]["mask"].copy()
    gt[0, :] = 0
    gt[25:, :] = 3  # a person the mask missed
    save_mask(gt_dir / "two.png", gt)
    result = build(out, gt=gt_dir, workers=1)
    report = out / "report"
    page = {r["image"]: r for r in page_json(result.index)["images"]}
    # mask values of the labels: cat 1, dog 2, person 3
    assert page["x/one.jpg"]["heat"] == {"labels": [1, 2], "kinds": ["cam", "refined"]}
    assert page["two.jpg"]["heat"] == {"labels": [3], "kinds": ["cam", "refined"]}
    assert page["old.jpg"]["heat"] is None
    heat = sorted(p.relative_to(report / "heat").as_posix() for p in (report / "heat").rglob("*.png"))
    assert heat == ["two.cam3.png", "two.refined3.png", "x/one.cam1.png", "x/one.cam2.png", "x/one.refined1.png", "x/one.refined2.png"]
    cam = np.load(out / "cams" / "x" / "one.npz")["refined"][1]
    index, _, _ = _png((report / "heat" / "x" / "one.refined2.png").read_bytes())
    assert np.array_equal(index, np.rint(np.clip(cam, 0, 1) * 255).astype(np.uint8))  # 40 px: drawn as is
    # The error map of the image with GT only: its pixels are eval's codes.
    errors, _, _ = _png((report / "overlays-err" / "two.png").read_bytes())
    want = np.where(specs["two.jpg"]["mask"] == 255, 2, (specs["two.jpg"]["mask"] != gt).astype(np.uint8))
    assert np.array_equal(errors, want)
    assert sorted(p.name for p in (report / "overlays-err").rglob("*.png")) == ["two.png"]

    # New CAMs for one image (one label fewer): only its heat maps are redrawn; the stale one goes.
    before = {p: p.stat().st_mtime_ns for p in (report / "heat").rglob("*.png")}
    write_npz(out / "cams" / "x" / "one.npz", labels=np.array([0]), cam=np.zeros((1, 30, 40), np.float32),
              refined=np.zeros((1, 30, 40), np.float32), confidence=np.full((30, 40), 0.9, np.float16))  # fmt: skip
    st = (out / "cams" / "x" / "one.npz").stat()
    os.utime(out / "cams" / "x" / "one.npz", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    result = build(out, gt=gt_dir, workers=1)
    assert not (report / "heat" / "x" / "one.cam2.png").exists() and not (report / "heat" / "x" / "one.refined2.png").exists()
    assert (report / "heat" / "two.cam3.png").stat().st_mtime_ns == before[report / "heat" / "two.cam3.png"]
    assert (report / "heat" / "x" / "one.cam1.png").stat().st_mtime_ns != before[report / "heat" / "x" / "one.cam1.png"]
    page = {r["image"]: r for r in page_json(result.index)["images"]}
    assert page["x/one.jpg"]["heat"]["labels"] == [1]

    # A deleted error map (or a cache from before error maps) is drawn again.
    (report / "overlays-err" / "two.png").unlink()
    build(out, gt=gt_dir, workers=1)
    assert (report / "overlays-err" / "two.png").is_file()
    cache = json.loads((report / CACHE_FILE).read_text())
    cache["images"]["two"]["gt_pictures_key"][0] = 1  # as a build of the previous version wrote it
    (report / CACHE_FILE).write_text(json.dumps(cache))
    stamp = (report / "overlays-err" / "two.png").stat().st_mtime_ns
    result = build(out, gt=gt_dir, workers=1)
    assert (report / "overlays-err" / "two.png").stat().st_mtime_ns != stamp

    # An image gone from the run takes its heat maps with it.
    run = json.loads((out / "run.json").read_text())
    run["images"] = [e for e in run["images"] if e["image"] != "two.jpg"]
    (out / "run.json").write_text(json.dumps(run))
    build(out, workers=1)
    assert not list((report / "heat").glob("two.*")) and not (report / "overlays-err" / "two.png").exists()


def test_review_json_is_embedded_and_a_bad_one_is_a_warning(tmp_path: Path) -> None:
    out, _ = _run_with_cams(tmp_path)
    (out / "review.json").write_text(json.dumps({"kind": "review", "version": 1, "updated_at": "2026-02-01T00:00:00+00:00",
                                                 "marks": {"two.jpg": {"mark": "rejected", "note": "half"}}}))  # fmt: skip
    result = build(out, workers=1)
    data = page_json(result.index)
    assert data["review"] == {"updated_at": "2026-02-01T00:00:00+00:00", "marks": {"two.jpg": {"mark": "rejected", "note": "half"}}}
    assert len(data["run_id"]) == 16 and not result.warnings
    (out / "review.json").write_text(json.dumps({"kind": "review", "version": 1, "marks": {"nope.jpg": {"mark": "fix"}}}))
    result = build(out, workers=1)
    assert page_json(result.index)["review"] is None
    assert any("not images of the run" in w and "starts without its marks" in w for w in result.warnings)
