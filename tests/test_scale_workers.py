"""`--workers N` end to end on the tiny golden CLIP: the same files as --workers 0, failures
recorded, Ctrl-C leaves no partial file and the rerun resumes."""

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

from clipseg_cli.scale import default_workers
from tests.conftest import ROOT, make_image, write_labels


def _files(root: Path, folder: str) -> dict[str, Path]:
    return {p.relative_to(root / folder).as_posix(): p for p in sorted((root / folder).rglob("*")) if p.is_file()}


def _no_partial_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".part")]


def test_workers_write_the_same_files_as_serial_and_record_failures(tmp_path: Path, cli, golden_weights: Path) -> None:
    images = tmp_path / "images"
    make_image(images / "a.png", (70, 90))
    make_image(images / "sub" / "grey.png", (50, 40), seed=1, mode="L")
    make_image(images / "wide.png", (60, 200), seed=2)  # scaled down by --max-side 128
    make_image(images / "tiny.png", (5, 7), seed=3)
    make_image(images / "b.jpg", (64, 48), seed=4)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (images / "empty.png").write_bytes(b"")
    names = ["a.png", "sub/grey.png", "wide.png", "tiny.png", "b.jpg", "corrupt.jpg", "empty.png", "missing.png"]
    labels = write_labels(tmp_path / "labels.json", {n: ["cat", "person"] for n in names})
    summaries = {}
    for workers in ("0", "2"):
        out = tmp_path / f"out{workers}"
        result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--device", "cpu",
                     "--save-cams", "--visualize", "--max-side", "128", "--workers", workers)  # fmt: skip
        assert result.exit_code == 1, result.output  # the three bad images
        summaries[workers] = json.loads((out / "run.json").read_text())
        assert _no_partial_files(out)
    assert "2 workers" in result.output

    serial, parallel = tmp_path / "out0", tmp_path / "out2"
    for folder in ("masks", "vis"):
        expected, got = _files(serial, folder), _files(parallel, folder)
        assert sorted(got) == sorted(expected) and len(got) == 5
        for rel, path in expected.items():
            assert got[rel].read_bytes() == path.read_bytes(), f"{folder}/{rel} differs"
    for rel, path in _files(serial, "cams").items():
        with np.load(path) as a, np.load(parallel / "cams" / rel) as b:
            assert a.files == b.files
            for key in a.files:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), f"cams/{rel}:{key}"

    one, two = summaries["0"], summaries["2"]
    assert one["counts"] == two["counts"]
    assert one["failed"] == two["failed"]  # same failures, same order
    assert {f["image"] for f in two["failed"]} == {"corrupt.jpg", "empty.png", "missing.png"}
    assert [(e["image"], e["labels"]) for e in one["images"]] == [(e["image"], e["labels"]) for e in two["images"]]
    for entry in two["images"]:
        seconds = entry["seconds"]
        assert set(seconds) == {"cam", "crf", "total"}
        assert seconds["cam"] > 0 and seconds["crf"] > 0
        assert seconds["total"] == pytest.approx(seconds["cam"] + seconds["crf"], abs=2e-4)


def test_bad_workers_value_is_a_usage_error(tmp_path: Path, cli, golden_weights: Path) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    result = cli(tmp_path / "images", "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights,
                 "--workers", "-1")  # fmt: skip
    assert result.exit_code == 2
    assert "--workers" in result.output and "Traceback" not in result.output


def test_default_workers() -> None:
    assert default_workers(100, cpus=1) == 0  # nothing to overlap with
    assert default_workers(1, cpus=16) == 0  # a pool costs more than it saves
    assert default_workers(100, cpus=2) == 2
    assert default_workers(100, cpus=4) == 4
    assert default_workers(100, cpus=64) == 8


def test_ctrl_c_with_workers_leaves_no_partial_files_and_rerun_resumes(tmp_path: Path, golden_weights: Path) -> None:
    images = tmp_path / "images"
    n = 12
    for i in range(n):
        make_image(images / f"{i:02d}.png", (96, 128), seed=i)
    labels = write_labels(tmp_path / "labels.json", {f"{i:02d}.png": ["cat"] for i in range(n)})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clipseg_cli", str(images), "--labels", str(labels), "--out", str(out),
           "--weights", str(golden_weights), "--save-cams", "--workers", "2"]  # fmt: skip
    # Its own process group, signalled as a whole: what Ctrl-C in a terminal does (workers included).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "masks").glob("*.png"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert _no_partial_files(out)
    summary = json.loads((out / "run.json").read_text())
    assert summary["interrupted"] is True
    masks = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert 2 <= len(masks) < n
    for stem in masks:
        assert (out / "cams" / f"{stem}.npz").exists()  # the mask is written last
    # Images finished while the workers were stopping are recorded too: run.json accounts for every mask.
    assert sorted(Path(e["image"]).stem for e in summary["images"]) == masks
    assert summary["counts"]["processed_this_run"] == len(masks)

    rerun = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["counts"]["already_done"] == len(masks)
    assert summary["counts"]["processed_this_run"] == n - len(masks)
    assert len(list((out / "masks").glob("*.png"))) == n
