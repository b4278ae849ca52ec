"""`--backend ray` on a local 2-CPU Ray started here: the same masks as the local backend, one
merged run.json, a resumed run, and a task that Ray retries rewriting identical files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipseg_cli.data.classes import load_class_set
from clipseg_cli.labeling import OutputLayout, WorkItem
from clipseg_cli.scale.ray_backend import ShardSpec, label_shard, shard
from tests.conftest import ROOT, Cli, make_image, write_labels

NAMES = ["a.png", "b.png", "sub/c.png", "d.jpg", "e.png", "wide.png", "corrupt.jpg"]


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs for this module (the CLI joins it: ray.is_initialized())."""
    try:
        import ray
    except ImportError:
        pytest.skip("ray is not installed (pip install 'wsss-label[ray]'); the Ray backend is not tested")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ray-data")
    images = root / "images"
    for i, name in enumerate(NAMES[:-2]):
        make_image(images / name, (60 + 4 * i, 80), seed=i)
    make_image(images / "wide.png", (50, 180), seed=9)
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    labels = write_labels(root / "labels.json", {n: ["cat", "person"] if "e" in n else ["dog"] for n in NAMES})
    return images, labels


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory, dataset, golden_weights: Path) -> tuple[Path, dict]:
    """The dataset labelled by the local backend, serially: what Ray must reproduce.

    With one torch thread, as a Ray task has (OMP_NUM_THREADS=1 for a 1-CPU task): the last
    bits of a matrix product may depend on how many threads split it, so a 2-thread local
    run's CAMs can differ from a task's by ~1e-6 (the masks practically never).
    """
    out = tmp_path_factory.mktemp("ray-reference") / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result, summary = _run(Cli(), dataset, out, golden_weights, "--workers", "0")
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 1, result.output  # corrupt.jpg
    return out, summary


def _run(cli, dataset, out: Path, weights: Path, *extra: str):
    images, labels = dataset
    result = cli(images, "--labels", labels, "--out", out, "--weights", weights, "--device", "cpu", "--save-cams",
                 "--max-side", "128", *extra)  # fmt: skip
    summary = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
    return result, summary


def _same_outputs(a: Path, b: Path) -> None:
    masks = sorted(p.relative_to(a).as_posix() for p in (a / "masks").rglob("*.png"))
    assert masks == sorted(p.relative_to(b).as_posix() for p in (b / "masks").rglob("*.png"))
    for rel in masks:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        npz = rel.replace("masks/", "cams/").replace(".png", ".npz")
        with np.load(a / npz) as x, np.load(b / npz) as y:
            assert x.files == y.files
            for key in x.files:
                assert np.array_equal(x[key], y[key]), f"{npz}:{key}"


def test_ray_backend_matches_local_merges_run_json_and_resumes(
    ray_local, tmp_path: Path, cli, golden_weights: Path, dataset, local_reference
) -> None:
    (local, expected), distributed = local_reference, tmp_path / "ray"

    # A killed Ray run: two images were finished, one file was being written.
    for stem in ("a", "sub/c"):
        for rel in (f"masks/{stem}.png", f"cams/{stem}.npz"):
            (distributed / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local / rel, distributed / rel)
    (distributed / "masks" / ".b.png.1234.part").write_bytes(b"half")

    result, summary = _run(cli, dataset, distributed, golden_weights, "--backend", "ray")
    assert result.exit_code == 1, result.output
    assert "labelling on Ray" in result.output
    _same_outputs(local, distributed)
    assert not list(distributed.rglob("*.part"))
    assert summary["counts"] == {**expected["counts"], "processed_this_run": 4, "already_done": 2}
    assert (
        summary["failed"]
        == expected["failed"]
        == [{"image": "corrupt.jpg", "reason": "not a readable image (corrupt, empty or unknown format)"}]
    )
    assert [e["image"] for e in summary["images"]] == [e["image"] for e in expected["images"]]
    done_here = {e["image"] for e in summary["images"] if e["seconds"] is not None}
    assert done_here == {"b.png", "d.jpg", "e.png", "wide.png"}
    assert summary["settings"]["device"] == "cpu"
    assert summary["interrupted"] is False

    # Everything done: a rerun does nothing and keeps the entries.
    result, again = _run(cli, dataset, distributed, golden_weights, "--backend", "ray")
    assert result.exit_code == 1  # corrupt.jpg still fails
    assert again["counts"]["processed_this_run"] == 0 and again["counts"]["already_done"] == 6


def test_a_retried_task_rewrites_identical_files(ray_local, tmp_path: Path, golden_weights: Path, dataset) -> None:
    """The task's worker dies after its shard is written once; Ray runs it again."""
    images, _ = dataset
    classes = load_class_set("voc")
    from clipseg_cli.cam.pipeline import CLIPESSettings

    out, snapshot = tmp_path / "out", tmp_path / "first-attempt"
    spec = ShardSpec(str(images), str(out), str(golden_weights), classes, CLIPESSettings(lam=classes.lam, max_side=128),
                     "cpu", save_cams=True, visualize=True)  # fmt: skip
    items = [WorkItem(n, (classes.index("dog"),), ("dog",)) for n in ("a.png", "wide.png", "corrupt.jpg")]

    def crash_after_first_attempt(spec: ShardSpec, items: list[WorkItem]):
        outcomes = label_shard(spec, items)
        if not snapshot.exists():
            shutil.copytree(out, snapshot)
            stats = {p.name: [p.stat().st_ino, p.stat().st_mtime_ns] for p in (out / "masks").glob("*.png")}
            (snapshot / "stats.json").write_text(json.dumps(stats))
            os._exit(1)  # the worker dies: Ray retries the task
        return outcomes

    task = ray_local.remote(num_cpus=1, max_retries=1)(crash_after_first_attempt)
    outcomes = ray_local.get(task.remote(spec, items), timeout=120)

    assert [(o.item.rel, o.error is None) for o in outcomes] == [
        ("a.png", True),
        ("wide.png", True),
        ("corrupt.jpg", False),
    ]
    layout, first = OutputLayout(out), OutputLayout(snapshot)
    first_stats = json.loads((snapshot / "stats.json").read_text())
    for item in items[:2]:
        for path, before in ((layout.mask(item), first.mask(item)), (layout.visual(item), first.visual(item))):
            assert path.read_bytes() == before.read_bytes()
        with np.load(layout.cams(item)) as x, np.load(first.cams(item)) as y:
            assert all(np.array_equal(x[k], y[k]) for k in x.files)
        stat = layout.mask(item).stat()
        assert [stat.st_ino, stat.st_mtime_ns] != first_stats[layout.mask(item).name]  # written again
    assert not list(out.rglob("*.part"))


def test_the_command_joins_a_running_cluster_with_ray_address(
    ray_local, tmp_path: Path, golden_weights: Path, dataset, local_reference
) -> None:
    """A separate driver process given --ray-address: this module's Ray acts as the cluster's head."""
    images, labels = dataset
    address = ray_local.get_runtime_context().gcs_address
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "clipseg_cli", str(images), "--labels", str(labels), "--out", str(out),
           "--weights", str(golden_weights), "--device", "cpu", "--save-cams", "--max-side", "128",
           "--backend", "ray", "--ray-address", address]  # fmt: skip
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr  # corrupt.jpg
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "run.json").read_text())
    assert summary["counts"]["processed_this_run"] == 6
    assert [f["image"] for f in summary["failed"]] == ["corrupt.jpg"]
    _same_outputs(local_reference[0], out)


def test_shards_are_consecutive_and_bounded() -> None:
    items = [WorkItem(f"{i}.png", (0,), ("x",)) for i in range(1000)]
    parts = shard(items, slots=2)
    assert [i for p in parts for i in p] == items
    assert max(len(p) for p in parts) <= 64 and len(parts) >= 8
    assert [len(p) for p in shard(items[:5], slots=2)] == [1, 1, 1, 1, 1]
    assert [len(p) for p in shard(items[:5], slots=2, size=2)] == [2, 2, 1]
    assert shard([], slots=4) == []


def test_ray_missing_or_misused_is_a_usage_error(tmp_path: Path, cli, golden_weights: Path, monkeypatch) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    base = [tmp_path / "images", "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights]
    result = cli(*base, "--ray-address", "auto")
    assert result.exit_code == 2 and "--ray-address needs --backend ray" in result.output
    result = cli(*base, "--backend", "ray", "--workers", "2")
    assert result.exit_code == 2 and "--workers is for --backend local" in result.output
    result = cli(*base, "--backend", "spark")
    assert result.exit_code == 2 and "'spark' is not one of 'local', 'ray'" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    result = cli(*base, "--backend", "ray")
    assert result.exit_code == 2
    assert "needs Ray, which is not installed: pip install ray" in " ".join(result.output.split())
    assert not (tmp_path / "out" / "masks").exists()
