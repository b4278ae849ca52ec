"""``--batch-size N`` end to end (CPU finish and, on CPU tensors, the device finish) against today's
one-image-at-a-time path; grouping by padded size with a bounded look-ahead; usage errors."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.cam.pipeline import PreparedImage
from clipseg_cli.io.masks import load_label_map
from clipseg_cli.labeling import Outcome, WorkItem
from clipseg_cli.scale.batched import BatchPipeline, InlineExecutor, images_per_batch
from tests.conftest import make_image, random_clip_state, write_labels

NAMES = {  # same padded size (80 x 96) unless noted; 1 or 3 labels
    "a.png": ["cat"],
    "b.png": ["person", "dog", "car"],
    "c.png": ["dog"],
    "d.png": ["car", "cat", "person"],
    "e.png": ["bird"],
    "sub/f.png": ["cat", "bus", "dog"],
    "wide.png": ["person"],  # 60 x 200, scaled down by --max-side 128: a size of its own
    "corrupt.jpg": ["cat"],
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CLIP with peaked attention (see test_batched_model), saved as a checkpoint."""
    state = random_clip_state(seed=1, dtype=torch.float32, vision_width=128, vision_layers=4, embed_dim=48, text_width=48)
    for key, value in state.items():
        if key.startswith("visual.") and key.endswith("in_proj_weight"):
            value[: 2 * value.shape[1]] *= 3.0
    state["logit_scale"] = torch.tensor(2.3)
    path = tmp_path_factory.mktemp("weights") / "peaked.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    images = root / "images"
    for i, name in enumerate(NAMES):
        if name == "wide.png":
            make_image(images / name, (60, 200), seed=i)
        elif name.endswith(".jpg"):
            (images / name).write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
        else:
            make_image(images / name, (70 + i % 3, 90 - i % 2), seed=i)  # 70..72 x 89..90: one padded size
    return images, write_labels(root / "labels.json", NAMES)


def _run(cli, dataset, weights: Path, out: Path, *extra: str):  # noqa: ANN001, ANN202
    images, labels = dataset
    result = cli(images, "--labels", labels, "--out", out, "--weights", weights, "--device", "cpu",
                 "--max-side", "128", *extra)  # fmt: skip
    assert result.exit_code == 1, result.output  # the corrupt image
    return json.loads((out / "run.json").read_text()), result.output


def _files(root: Path, folder: str) -> list[str]:
    return sorted(p.relative_to(root / folder).as_posix() for p in (root / folder).rglob("*") if p.is_file())


def _assert_same_outputs(reference: Path, other: Path, min_mask_agreement: float = 0.999) -> None:
    for folder in ("masks", "cams", "vis"):
        assert _files(other, folder) == _files(reference, folder)
    assert len(_files(reference, "masks")) == 7
    for rel in _files(reference, "masks"):
        a, b = load_label_map(reference / "masks" / rel), load_label_map(other / "masks" / rel)
        assert a.shape == b.shape and (a == b).mean() >= min_mask_agreement, rel
    for rel in _files(reference, "cams"):
        with np.load(reference / "cams" / rel) as a, np.load(other / "cams" / rel) as b:
            assert a.files == b.files
            for key in a.files:
                assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, f"{rel}:{key}"
            np.testing.assert_array_equal(a["labels"], b["labels"])
            np.testing.assert_allclose(b["cam"], a["cam"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(b["refined"], a["refined"], atol=1e-5, rtol=0)
            # the CRF magnifies input differences of 1e-6 to some 1e-3 at a few pixels (float16 here)
            confidence_a, confidence_b = a["confidence"].astype(np.float32), b["confidence"].astype(np.float32)
            np.testing.assert_allclose(confidence_b, confidence_a, atol=1e-2)
            assert np.abs(confidence_b - confidence_a).mean() < 1e-4
    for rel in _files(reference, "vis"):
        with Image.open(reference / "vis" / rel) as a, Image.open(other / "vis" / rel) as b:
            assert a.size == b.size and a.mode == b.mode


def _assert_same_summary(reference: dict, other: dict) -> None:
    assert other["counts"] == reference["counts"]
    assert other["failed"] == reference["failed"]
    assert [f["image"] for f in other["failed"]] == ["corrupt.jpg"]
    assert [(e["image"], e["labels"]) for e in other["images"]] == [(e["image"], e["labels"]) for e in reference["images"]]
    expected = {e["image"]: e for e in reference["images"]}
    for entry in other["images"]:
        seconds = entry["seconds"]
        assert set(seconds) == {"cam", "crf", "total"} and seconds["cam"] > 0 and seconds["crf"] > 0
        assert seconds["total"] == pytest.approx(seconds["cam"] + seconds["crf"], abs=2e-4)
        assert set(entry) == set(expected[entry["image"]])
        assert entry["confidence"] == pytest.approx(expected[entry["image"]]["confidence"], abs=1e-3)
        assert entry["ignored"] == pytest.approx(expected[entry["image"]]["ignored"], abs=1e-3)


@pytest.fixture(scope="module")
def reference_runs(dataset, weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """One image at a time, as before batching, with each CRF backend."""
    from tests.conftest import Cli

    runs = {}
    for backend in ("pydensecrf", "torch"):
        out = tmp_path_factory.mktemp("ref") / backend
        summary, _ = _run(Cli(), dataset, weights, out, "--workers", "0", "--batch-size", "1", "--save-cams",
                          "--visualize", "--crf-backend", backend)  # fmt: skip
        runs[backend] = (out, summary)
    return runs


@pytest.fixture(scope="module")
def reference_run(reference_runs) -> tuple[Path, dict]:
    return reference_runs["pydensecrf"]


@pytest.mark.parametrize("workers", ["0", "2"])
def test_batches_write_what_one_image_at_a_time_writes(cli, dataset, weights, reference_run, tmp_path, workers) -> None:
    out = tmp_path / "out"
    summary, output = _run(cli, dataset, weights, out, "--workers", workers, "--batch-size", "4", "--save-cams",
                           "--visualize")  # fmt: skip
    assert "batches of 4" in output
    _assert_same_outputs(reference_run[0], out)
    _assert_same_summary(reference_run[1], summary)
    assert not list(out.rglob("*.part"))


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_device_finish_on_cpu_tensors_writes_the_same_files(dataset, weights, reference_runs, tmp_path, backend) -> None:
    """The GPU finish path (resize, CRF, label map on the model's device, then the writers), run on the CPU."""
    from clipseg_cli.cam.device_finish import pydensecrf_on_tensors
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.data.classes import load_class_set
    from clipseg_cli.data.labels import read_labels_file
    from clipseg_cli.labeling import LabelJob, OutputLayout, make_plan
    from clipseg_cli.postprocess.crf_torch import dense_crf_torch_batch
    from clipseg_cli.scale.batched import batched_engine

    images, labels = dataset
    classes = load_class_set("voc")
    predictor = CLIPESPredictor(load_clip(weights), classes, CLIPESSettings(lam=classes.lam, max_side=128))
    crf = dense_crf_torch_batch if backend == "torch" else pydensecrf_on_tensors
    summaries = {}
    for keep in (True, False):
        layout = OutputLayout(tmp_path / f"out-{keep}")
        plan = make_plan(images, read_labels_file(labels), classes, layout, overwrite=False, need_cams=keep)
        job = LabelJob(images, layout, predictor, save_cams=keep, visualize=keep)
        engine = batched_engine(job, workers=0, batch_size=4, device_finish=True, crf=crf)
        summaries[keep] = job.run(plan, engine=engine)
    reference, reference_summary = reference_runs[backend]
    _assert_same_outputs(reference, tmp_path / "out-True")
    _assert_same_summary(reference_summary, summaries[True])
    bare = tmp_path / "out-False"
    assert _files(bare, "masks") == _files(reference, "masks")
    assert not (bare / "cams").exists() and not (bare / "vis").exists()
    _assert_same_summary(reference_summary, summaries[False])


def test_images_per_batch_shrinks_for_large_inputs() -> None:
    assert images_per_batch(16, 1 + 32 * 24) == 16  # VOC-sized: the full batch
    assert images_per_batch(16, 1 + 64 * 48) == 5  # 1024 x 768: 16 * 1025 // 3073
    assert images_per_batch(1, 1 + 64 * 64) == 1
    assert images_per_batch(4, 10**6) == 1


# -- grouping, with a fake model -------------------------------------------------------------


class FakeRunner:
    """Records the batches; images whose name starts with "bad" make a batch fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    @staticmethod
    def finish_stage(item: WorkItem, size: tuple) -> dict:
        return {"seconds": {"cam": 0.1, "crf": 0.1, "total": 0.2}}

    def launch(self, items: list[WorkItem], prepared: list) -> list:
        if any(Path(i.rel).name.startswith("bad") for i in items):
            raise RuntimeError("CUDA out of memory (pretend)")
        sizes = {p.pixels.shape[:2] for p, _ in prepared}
        assert len(sizes) == 1, "a batch mixes padded sizes"
        self.batches.append([i.rel for i in items])
        return [(p.pixels.shape[:2],) for p, _ in prepared]

    @staticmethod
    def collect(launched: list) -> list:
        return launched


def _fake_prepare(item: WorkItem) -> tuple[PreparedImage, float]:
    if item.rel.startswith("unreadable"):
        raise ValueError("cannot decode image")
    side = int(item.rel.split("-")[1])
    return PreparedImage(np.zeros((1, 1, 3), np.uint8), np.zeros((1, 1, 3), np.uint8), np.zeros((side, 32, 3), np.uint8)), 0.0


def _pipeline(runner: FakeRunner, batch_size: int, prefetch: int) -> BatchPipeline:
    return BatchPipeline(
        InlineExecutor, runner, prepare=_fake_prepare, batch_size=batch_size, patch=16, prefetch=prefetch, window=batch_size + 1
    )  # type: ignore[arg-type]


def test_groups_hold_one_padded_size_and_every_image_ends_once() -> None:
    sides = [16, 16, 32, 16, 32, 48, 16, 16, 32, 16, 48, 16]
    items = [WorkItem(f"img-{side}-{i}", (0,), ("cat",)) for i, side in enumerate(sides)]
    runner = FakeRunner()
    recorded: list[Outcome] = []
    pipeline = _pipeline(runner, batch_size=3, prefetch=6)
    pipeline.run(items, recorded.append)
    assert sorted(o.item.rel for o in recorded) == sorted(i.rel for i in items)
    assert all(o.error is None for o in recorded)
    assert all(1 <= len(b) <= 3 for b in runner.batches)
    assert sum(len(b) for b in runner.batches) == len(items)
    assert [len(b) for b in runner.batches][:2] == [3, 3]  # full groups of size 16 run first
    assert pipeline.max_in_flight <= 6 + 3 + 1  # look-ahead + a batch + the write window


def test_failures_are_per_image_and_a_failing_batch_is_retried_image_by_image() -> None:
    items = [WorkItem(name, (0,), ("cat",)) for name in ("img-16-0", "bad-16-1", "img-16-2", "unreadable-16-3", "img-32-4")]
    runner = FakeRunner()
    recorded: dict[str, Outcome] = {}
    _pipeline(runner, batch_size=4, prefetch=5).run(items, lambda o: recorded.update({o.item.rel: o}))
    assert set(recorded) == {i.rel for i in items}
    assert recorded["bad-16-1"].error == "RuntimeError: CUDA out of memory (pretend)"
    assert recorded["unreadable-16-3"].error == "ValueError: cannot decode image"
    assert all(recorded[n].error is None for n in ("img-16-0", "img-16-2", "img-32-4"))
    assert ["img-16-0"] in runner.batches and ["img-16-2"] in runner.batches  # retried alone


def test_ctrl_c_finishes_the_batch_the_device_has_then_stops() -> None:
    class Interrupted(FakeRunner):
        def launch(self, items, prepared):  # noqa: ANN001, ANN201
            if len(self.batches) == 1:
                raise KeyboardInterrupt
            return super().launch(items, prepared)

    items = [WorkItem(f"img-16-{i}", (0,), ("cat",)) for i in range(6)]
    runner = Interrupted()
    recorded: list[Outcome] = []
    with pytest.raises(KeyboardInterrupt):
        _pipeline(runner, batch_size=2, prefetch=4).run(items, recorded.append)
    assert runner.batches == [["img-16-0", "img-16-1"]]
    assert sorted(o.item.rel for o in recorded) == ["img-16-0", "img-16-1"]  # launched before Ctrl-C: finished
    assert all(o.error is None for o in recorded)


def test_inline_executor_hands_errors_over_like_a_pool() -> None:
    done: Future = InlineExecutor().submit(int, "not a number")
    assert isinstance(done.exception(), ValueError)
    assert InlineExecutor().submit(sum, [1, 2]).result() == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--precision", "fp8"], "--precision"),
        (["--batch-size", "2", "--backend", "ray"], "--batch-size"),
    ],
)
def test_bad_batch_and_precision_options_are_usage_errors(tmp_path: Path, cli, golden_weights: Path, args, message) -> None:
    make_image(tmp_path / "images" / "a.png")
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"]})
    result = cli(tmp_path / "images", "--labels", labels, "--out", tmp_path / "out", "--weights", golden_weights, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
