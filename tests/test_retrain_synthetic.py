"""End to end: train DeepLabV2-ResNet18 from scratch on synthetic shapes, then predict held-out images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from clipseg_cli.cli import app
from clipseg_cli.evaluation.confusion import ConfusionAccumulator, metrics_from_confusion
from clipseg_cli.io.masks import load_label_map, voc_palette
from clipseg_cli.segmentation.synthetic import write_shapes_dataset

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    train = write_shapes_dataset(root / "train", 48, size=64, num_classes=3, seed=0)
    val = write_shapes_dataset(root / "val", 8, size=64, num_classes=3, seed=1)
    # The 255 regions are really there: the confidence-guided loss has something to ignore.
    assert sum((load_label_map(p) == 255).sum() for p in (train / "masks").glob("*.png")) > 0
    run = root / "run"
    result = runner.invoke(
        app,
        [str(a) for a in [
            "retrain", train / "images", train / "masks", "--classes", "red,green,blue", "--out", run,
            "--arch", "deeplabv2-resnet18", "--iters", 100, "--batch-size", 4, "--crop", 64, "--scales", "0.75,1,1.25",
            "--lr", "2e-3", "--save-every", 50, "--val", val / "images", val / "gt", "--device", "cpu",
        ]],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return val, run, json.loads((run / "run.json").read_text())


def _miou(pred_dir: Path, gt_dir: Path) -> float:
    acc = ConfusionAccumulator(4)
    for gt_path in sorted(gt_dir.glob("*.png")):
        acc.add(load_label_map(gt_path), load_label_map(pred_dir / gt_path.name))
    miou = metrics_from_confusion(acc.matrix()).miou
    assert miou is not None
    return miou


def test_training_run_files(trained: tuple[Path, Path, dict]) -> None:
    _, run, summary = trained
    assert summary["status"] == "finished" and summary["iteration"] == 100
    assert summary["model_config"]["arch"] == "deeplabv2-resnet18"
    assert summary["val"]["best"]["miou"] > 0.6
    for name in ("last.pt", "best.pt", "metrics.jsonl", "val.jsonl", "loss.png", "run.json"):
        assert (run / name).is_file(), name
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["kind"] == "deeplabv2" and ckpt["class_names"] == ["red", "green", "blue"]
    assert [json.loads(x)["iteration"] for x in (run / "val.jsonl").read_text().splitlines()] == [50, 100]
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_trained_model_segments_held_out_images(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    val, run, _ = trained
    result = runner.invoke(
        app,
        ["predict", str(val / "images"), "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path), "--scales", "1", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert _miou(tmp_path / "masks", val / "gt") >= 0.8


def test_predict_writes_palette_masks_of_the_image_size(trained: tuple[Path, Path, dict], tmp_path: Path) -> None:
    val, run, _ = trained
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(images / "sub" / "odd.jpg")
    Image.open(val / "images" / "s000.png").save(images / "a.png")
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = [
        "predict",
        str(images),
        "--checkpoint",
        str(run / "best.pt"),
        "--out",
        str(out),
        "--no-crf",
        "--flip",
        "--scales",
        "0.75,1",
        "--device",
        "cpu",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # one image could not be read
    assert "broken" in result.output
    for rel, size in (("sub/odd.png", (70, 50)), ("a.png", (64, 64))):
        with Image.open(out / "masks" / rel) as m:
            assert m.mode == "P" and m.size == size
            assert np.array_equal(np.asarray(m.getpalette()[: 3 * 256]).reshape(256, 3), voc_palette())
            assert set(np.unique(np.asarray(m))) <= {0, 1, 2, 3}
    summary = json.loads((out / "predict.json").read_text())
    assert summary["written"] == 2 and summary["failed"][0]["image"] == "broken"
    again = runner.invoke(app, args)  # existing masks are kept: a rerun resumes
    assert json.loads((out / "predict.json").read_text())["skipped_existing"] == 2 and again.exit_code == 1
