"""`wsss-label retrain` / `predict` through the CLI: exact resume, overfitting, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.segmentation.synthetic import write_shapes_dataset
from clipseg_cli.training.checkpoint import make_checkpoint, save_checkpoint
from tests.conftest import (
    assert_same_weights,
    interrupt_training_at,
    interrupted_run,
    invoke,
    metrics_rows,
    one_error_line,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--classes", "a,b,c", "--arch", "deeplabv2-resnet18", "--crop", "32", "--scales", "0.75,1,1.25", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), 6, size=40, num_classes=3, seed=3)


def test_resume_is_bit_exact(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = [data / "images", data / "masks", *TINY, "--iters", "10", "--batch-size", "2", "--lr", "1e-3", "--save-every", "5"]
    full = invoke("retrain", *common, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output

    interrupted_run(monkeypatch, 5, tmp_path / "cut", lambda: invoke("retrain", *common, "--out", tmp_path / "cut"))
    again = invoke("retrain", *common, "--out", tmp_path / "cut")
    assert again.exit_code == 2 and "--resume" in one_error_line(again)
    resumed = invoke("retrain", data / "images", data / "masks", "--out", tmp_path / "cut", "--resume", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output

    a, b = assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")
    assert a["iteration"] == b["iteration"] == 10
    assert all("momentum_buffer" in s for s in b["optimizer"]["state"].values())
    rows_a, rows_b = metrics_rows(tmp_path / "full"), metrics_rows(tmp_path / "cut")
    assert [r["iteration"] for r in rows_b] == list(range(1, 11))
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert run["status"] == "finished" and run["iteration"] == 10
    assert (tmp_path / "cut" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_changed_settings(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = [data / "images", data / "masks", *TINY, "--iters", "4", "--batch-size", "1", "--save-every", "2"]
    with monkeypatch.context() as m:
        interrupt_training_at(m, 2)
        assert invoke("retrain", *common, "--out", tmp_path / "r").exit_code == 130
    changed = invoke("retrain", *common[:-6], "--iters", "8", "--out", tmp_path / "r", "--resume")
    assert changed.exit_code == 2
    assert "iters" in one_error_line(changed)


def test_loss_drops_when_overfitting_one_image(tmp_path: Path) -> None:
    data = write_shapes_dataset(tmp_path / "one", 1, size=32, num_classes=2, seed=5)
    result = invoke(
        "retrain", data / "images", data / "masks", "--classes", "a,b", "--arch", "deeplabv2-resnet18",
        "--crop", "32", "--scales", "1", "--iters", "25", "--batch-size", "2", "--lr", "1e-3", "--device", "cpu",
        "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < 0.35 * np.mean(losses[:3])


def test_missing_masks_folder(data: Path, tmp_path: Path) -> None:
    result = invoke("retrain", data / "images", tmp_path / "nope", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "nope" in one_error_line(result)


def test_image_without_mask(data: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    shutil.copytree(data / "masks", masks)
    (masks / "s002.png").unlink()
    result = invoke("retrain", data / "images", masks, *TINY, "--iters", "1", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "s002.png" in one_error_line(result)
    ok = invoke("retrain", data / "images", masks, *TINY, "--iters", "1", "--batch-size", "1", "--skip-missing", "--out", tmp_path / "run")
    assert ok.exit_code == 0, ok.output


def test_mask_of_wrong_size_or_label(data: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    shutil.copytree(data / "masks", masks)
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(masks / "s001.png")
    result = invoke("retrain", data / "images", masks, *TINY, "--iters", "1", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "s001.png" in one_error_line(result)
    shutil.copy(data / "masks" / "s001.png", masks / "s001.png")
    Image.fromarray(np.full((40, 40), 9, np.uint8), mode="L").save(masks / "s004.png")
    result = invoke("retrain", data / "images", masks, *TINY, "--iters", "3", "--batch-size", "6", "--out", tmp_path / "run2")
    assert result.exit_code == 2 and "out of range" in one_error_line(result)


def test_bad_init_file(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x00garbage")
    result = invoke("retrain", data / "images", data / "masks", *TINY, "--init", bad, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "weights.pth" in one_error_line(result)


def test_predict_bad_checkpoints(data: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"PK\x03\x04 not really")
    result = invoke("predict", data / "images", "--checkpoint", garbage, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "garbage.pt" in one_error_line(result)

    result = invoke("predict", data / "images", "--checkpoint", tmp_path / "absent.pt", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "absent.pt" in one_error_line(result)

    plain = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    result = invoke("predict", data / "images", "--checkpoint", plain, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "not a wsss-label checkpoint" in one_error_line(result)

    alien = tmp_path / "alien.pt"
    save_checkpoint(alien, make_checkpoint("weakclip", {}, ["a"], {}))
    result = invoke("predict", data / "images", "--checkpoint", alien, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "deeplabv2" in one_error_line(result)

    broken = tmp_path / "broken.pt"
    save_checkpoint(
        broken,
        make_checkpoint(
            "deeplabv2",
            {
                "arch": "deeplabv2-resnet18",
                "num_classes": 4,
                "style": "pytorch",
                "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1], "bgr": False},
            },
            ["a", "b", "c"],
            {"x": torch.zeros(1)},
        ),
    )
    result = invoke("predict", data / "images", "--checkpoint", broken, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "broken.pt" in one_error_line(result)


def test_predict_dispatches_on_the_checkpoint_kind(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from clipseg_cli import methods

    class Halves:
        class_names = ["left", "right"]

        def probabilities(self, image: np.ndarray, labels=None) -> np.ndarray:  # noqa: ANN001
            seen.setdefault("labels", []).append(labels)
            h, w = image.shape[:2]
            probs = np.zeros((3, h, w), np.float32)
            probs[1, :, : w // 2] = 1
            probs[2, :, w // 2 :] = 1
            return probs

    seen = {}

    def load(ckpt, device, options):  # type: ignore[no-untyped-def]
        seen.update(kind=ckpt["kind"], scales=options.scales, flip=options.flip)
        seen["cam_options"] = (options.bg_threshold, options.caa)
        return Halves()

    methods.all_methods()  # the registry is complete before a method is added beside it
    monkeypatch.setitem(methods.METHODS, "halves", SimpleNamespace(name="halves", kind="halves", load_predictor=load))
    ckpt = tmp_path / "halves.pt"
    save_checkpoint(ckpt, make_checkpoint("halves", {}, ["left", "right"], {}))
    out = tmp_path / "out"
    result = invoke("predict", data / "images", "--checkpoint", ckpt, "--out", out, "--scales", "1,2", "--flip", "--no-crf")
    assert result.exit_code == 0, result.output
    assert seen.pop("labels") == [None] * 6
    assert seen.pop("cam_options") == (None, False)
    assert seen == {"kind": "halves", "scales": (1.0, 2.0), "flip": True}
    mask = np.asarray(Image.open(out / "masks" / "s000.png"))
    assert mask.shape == (40, 40) and (mask[:, :20] == 1).all() and (mask[:, 20:] == 2).all()
    assert json.loads((out / "predict.json").read_text())["class_names"] == ["left", "right"]

    # --labels: the predictor gets each image's mask values, other classes become 255, unlabelled skipped
    labels = tmp_path / "labels.txt"
    labels.write_text("s000.png right\ns001 LEFT right\n")
    out2 = tmp_path / "out2"
    result = invoke("predict", data / "images", "--checkpoint", ckpt, "--labels", labels, "--out", out2, "--no-crf")
    assert result.exit_code == 0, result.output
    assert seen["labels"][-6:].count(None) == 0 and [2] in seen["labels"] and [1, 2] in seen["labels"]
    mask = np.asarray(Image.open(out2 / "masks" / "s000.png"))
    assert (mask[:, :20] == 255).all() and (mask[:, 20:] == 2).all()
    assert sorted(p.name for p in (out2 / "masks").iterdir()) == ["s000.png", "s001.png"]
    result = invoke("predict", data / "images", "--checkpoint", ckpt, "--out", tmp_path / "o4", "--no-crf",
                    "--bg-threshold", "0.3", "--caa")  # fmt: skip
    assert result.exit_code == 0 and seen["cam_options"] == (0.3, True)
    result = invoke("predict", data / "images", "--checkpoint", ckpt, "--out", tmp_path / "o5", "--bg-threshold", "2")
    assert result.exit_code == 2 and "--bg-threshold" in result.output
    bad = tmp_path / "bad.txt"
    bad.write_text("s000.png up\n")
    result = invoke("predict", data / "images", "--checkpoint", ckpt, "--labels", bad, "--out", tmp_path / "o3")
    assert result.exit_code == 2 and "unknown class 'up'" in result.output
