"""`wsss-label IMAGES ...` end to end on the tiny golden CLIP: outputs, resume, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli.io.masks import load_label_map
from tests.conftest import ROOT, make_image, write_labels


@pytest.fixture
def run(cli, golden_weights: Path, tmp_path: Path):
    """Label ``images`` with the golden weights; returns (result, out folder, run.json or None)."""

    def _run(images: Path, labels: Path, *extra: str | Path, out: Path | None = None):
        out = out or tmp_path / "out"
        result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--device", "cpu", *extra)
        summary = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
        return result, out, summary

    return _run


def _no_partial_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".part")]


def test_bad_inputs_fail_alone_and_good_images_are_done(tmp_path: Path, run) -> None:
    images = tmp_path / "images"
    make_image(images / "good.png", (70, 90))
    make_image(images / "sub" / "grey.png", (50, 40), seed=1, mode="L")
    make_image(images / "palette.png", (33, 47), seed=2, mode="P")
    make_image(images / "rgba.png", (40, 40), seed=3, mode="RGBA")
    make_image(images / "cmyk.jpg", (48, 64), seed=4, mode="CMYK")
    Image.fromarray(np.linspace(0, 65535, 60 * 30, dtype=np.uint16).reshape(30, 60)).save(images / "deep.png")
    rotated = Image.open(make_image(images / "src.png", (30, 50), seed=5))
    exif = rotated.getexif()
    exif[0x0112] = 8
    rotated.save(images / "rotated.jpg", exif=exif.tobytes())
    make_image(images / "tiny.png", (5, 7), seed=6)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (images / "empty.png").write_bytes(b"")
    make_image(images / "unlabelled.png", (20, 20))
    names = ["good.png", "sub/grey.png", "palette.png", "rgba.png", "cmyk.jpg", "deep.png", "rotated.jpg",
             "tiny.png", "corrupt.jpg", "empty.png", "missing.jpg", "src.png"]  # fmt: skip
    labels = write_labels(tmp_path / "labels.json", {n: ["cat", "person", "cat"] for n in names})

    result, out, summary = run(images, labels, "--save-cams")

    assert result.exit_code == 1, result.output
    failed = {f["image"]: f["reason"] for f in summary["failed"]}
    assert set(failed) == {"corrupt.jpg", "empty.png", "missing.jpg"}
    assert "missing" in failed["missing.jpg"]
    assert [s["image"] for s in summary["skipped"]] == ["unlabelled.png"]
    done = {e["image"] for e in summary["images"]}
    assert done == set(names) - set(failed)
    expected_shapes = {"good": (70, 90), "sub/grey": (50, 40), "deep": (30, 60), "rotated": (50, 30), "tiny": (5, 7)}
    for stem, shape in expected_shapes.items():
        mask = load_label_map(out / "masks" / f"{stem}.png")
        assert mask.shape == shape
        assert set(np.unique(mask)) <= {0, 8, 15, 255}  # background, cat, person, ignored
        cams = np.load(out / "cams" / f"{stem}.npz")
        assert list(cams["labels"]) == [7, 14]  # duplicate "cat" dropped, order kept
        assert cams["cam"].shape == (2, *shape) and cams["refined"].dtype == np.float32
        assert cams["confidence"].dtype == np.float16
    assert not (out / "masks" / "corrupt.png").exists()
    for entry in summary["images"]:
        assert set(entry["seconds"]) == {"cam", "crf", "total"} and entry["labels"] == ["cat", "person"]
    assert _no_partial_files(out)
    assert "failed" in result.output and "corrupt.jpg" in result.output


def test_unknown_class_is_a_usage_error_listing_valid_names(tmp_path: Path, run) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat", "kitten"]})
    result, out, summary = run(tmp_path / "images", labels)
    assert result.exit_code == 2
    assert "unknown class 'kitten'" in result.output and "aeroplane, bicycle" in result.output
    assert summary is None and not (out / "masks").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--template", "a photo"], "--template"),
        (["--lambda", "1.5"], "--lambda"),
        (["--synonyms", "word"], "--synonyms"),
        (["--classes", "nowhere/classes.txt"], "class file not found"),
        (["--device", "cuda"] if not __import__("torch").cuda.is_available() else ["--mu", "2"], "--"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, run, extra: list[str], message: str) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    result, out, _ = run(tmp_path / "images", labels, *extra)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert not out.exists()


def test_bad_weights_and_escaping_labels_exit_2(tmp_path: Path, cli) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    result = cli(tmp_path / "images", "--labels", labels, "--out", tmp_path / "o", "--weights", bad)
    assert result.exit_code == 2 and "cannot read CLIP weights" in result.output
    escaping = write_labels(tmp_path / "esc.json", {"../a.png": ["cat"]})
    result = cli(tmp_path / "images", "--labels", escaping, "--out", tmp_path / "o", "--weights", bad)
    assert result.exit_code == 2 and "escapes the image folder" in result.output
    result = cli(tmp_path / "images", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--labels" in result.output


def test_resume_skips_finished_images_and_overwrite_redoes_them(tmp_path: Path, run) -> None:
    for i in range(3):
        make_image(tmp_path / "images" / f"{i}.png", seed=i)
    labels = write_labels(tmp_path / "labels.json", {f"{i}.png": ["dog"] for i in range(3)})
    result, out, first = run(tmp_path / "images", labels)
    assert result.exit_code == 0 and first["counts"]["processed_this_run"] == 3
    (out / "masks" / "1.png").unlink()
    stamp = (out / "masks" / "0.png").stat().st_mtime_ns
    result, _, second = run(tmp_path / "images", labels)
    assert second["counts"] == {"labelled": 3, "processed_this_run": 1, "already_done": 2, "skipped": 0, "failed": 0}
    assert (out / "masks" / "0.png").stat().st_mtime_ns == stamp
    assert second["images"][0]["seconds"] == first["images"][0]["seconds"]  # kept from the first run
    _, _, third = run(tmp_path / "images", labels, "--overwrite")
    assert third["counts"]["processed_this_run"] == 3


def test_max_side_scales_work_down_but_outputs_keep_the_original_size(tmp_path: Path, run) -> None:
    make_image(tmp_path / "images" / "big.png", (300, 700))
    labels = write_labels(tmp_path / "labels.json", {"big.png": ["horse"]})
    result, out, summary = run(tmp_path / "images", labels, "--max-side", "128", "--save-cams")
    assert result.exit_code == 0
    assert load_label_map(out / "masks" / "big.png").shape == (300, 700)
    assert np.load(out / "cams" / "big.npz")["cam"].shape == (1, 300, 700)
    assert summary["settings"]["max_side"] == 128


def test_no_crf_gives_plain_argmax_without_ignored_pixels(tmp_path: Path, run) -> None:
    make_image(tmp_path / "images" / "a.png", (64, 96))
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat", "dog"]})
    result, out, _ = run(tmp_path / "images", labels, "--no-crf", "--save-cams", "--mu", "1.0")
    assert result.exit_code == 0
    mask = load_label_map(out / "masks" / "a.png")
    cams = np.load(out / "cams" / "a.npz")
    assert "confidence" not in cams
    refined = cams["refined"]
    expected = np.array([0, 8, 12], np.uint8)[np.concatenate([1 - refined.max(0)[None], refined]).argmax(0)]
    np.testing.assert_array_equal(mask, expected)


def test_visualize_and_output_inside_the_image_folder(tmp_path: Path, run) -> None:
    images = tmp_path / "images"
    make_image(images / "a.png", (40, 60))
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat", "person"]})
    result, out, _ = run(images, labels, "--visualize", out=images / "out")
    assert result.exit_code == 0
    vis = np.asarray(Image.open(out / "vis" / "a.png"))
    assert vis.shape[0] > 40 and vis.shape[1] > 4 * vis.shape[0] / 2  # image, mask, two CAM tiles
    result, _, summary = run(images, labels, out=images / "out")
    assert summary["skipped"] == [] and summary["counts"]["already_done"] == 1


def test_annotations_folder_and_explicit_label_command(tmp_path: Path, cli, golden_weights: Path) -> None:
    make_image(tmp_path / "JPEGImages" / "2007_000001.png")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "2007_000001.xml").write_text(
        "<annotation><object><name>bird</name></object><object><name>boat</name></object></annotation>"
    )
    out = tmp_path / "out"
    result = cli("label", tmp_path / "JPEGImages", "--annotations", tmp_path / "Annotations", "--out", out,
                 "--weights", golden_weights, "--save-cams")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert list(np.load(out / "cams" / "2007_000001.npz")["labels"]) == [2, 3]


def test_synonym_modes(tmp_path: Path, run) -> None:
    make_image(tmp_path / "images" / "a.png", (64, 64))
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat", "person"]})
    cams = {}
    for mode in ("sentence", "feature", "cam"):
        result, out, _ = run(tmp_path / "images", labels, "--synonyms", mode, "--save-cams", "--overwrite")
        assert result.exit_code == 0
        cams[mode] = np.load(out / "cams" / "a.npz")["cam"]
    # "person" has synonyms, so the fusion level changes its CAM; the runs differ.
    assert not np.allclose(cams["sentence"][1], cams["feature"][1])
    assert not np.allclose(cams["sentence"][1], cams["cam"][1])


def test_console_script_both_spellings(tmp_path: Path, golden_weights: Path) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    script = Path(sys.executable).with_name("wsss-label")
    for i, prefix in enumerate([[], ["label"]]):
        out = tmp_path / f"out{i}"
        cmd = [str(script), *prefix, str(tmp_path / "images"), "--labels", str(labels), "--out", str(out),
               "--weights", str(golden_weights)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (out / "masks" / "a.png").exists()
    first, second = (load_label_map(tmp_path / f"out{i}" / "masks" / "a.png") for i in range(2))
    np.testing.assert_array_equal(first, second)


def test_ctrl_c_leaves_no_partial_files_and_rerun_resumes(tmp_path: Path, golden_weights: Path) -> None:
    images = tmp_path / "images"
    n = 12
    for i in range(n):
        make_image(images / f"{i:02d}.png", (96, 128), seed=i)
    labels = write_labels(tmp_path / "labels.json", {f"{i:02d}.png": ["cat"] for i in range(n)})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clipseg_cli", str(images), "--labels", str(labels), "--out", str(out),
           "--weights", str(golden_weights), "--save-cams"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "masks").glob("*.png"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert _no_partial_files(out)
    summary = json.loads((out / "run.json").read_text())
    assert summary["interrupted"] is True
    finished = len(list((out / "masks").glob("*.png")))
    assert 2 <= finished < n
    for mask in (out / "masks").glob("*.png"):
        assert (out / "cams" / f"{mask.stem}.npz").exists()  # the mask is written last
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ})
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["counts"]["already_done"] == finished
    assert summary["counts"]["processed_this_run"] == n - finished


def test_error_lines_keep_square_brackets(tmp_path: Path, cli) -> None:
    """Error text is printed literally, not read as Rich markup."""
    result = cli(tmp_path / "no[such]folder", "--labels", tmp_path / "l.json", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "no[such]folder" in result.output


def test_report_option_builds_the_gallery_at_the_end(tmp_path: Path, run) -> None:
    make_image(tmp_path / "images" / "a.png", (40, 60))
    make_image(tmp_path / "images" / "b.png", (40, 60), seed=1)
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"], "b.png": ["dog"]})
    result, out, _ = run(tmp_path / "images", labels, "--report", "--workers", "0")
    assert result.exit_code == 0, result.output
    page = (out / "report" / "index.html").read_text()
    assert "a.png" in page and "b.png" in page
