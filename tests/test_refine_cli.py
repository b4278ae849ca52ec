"""`wsss-label refine train|predict` through the CLI (issue 7): learning, exact resume, eq. 14 on
the written masks, `wsss-label predict` on a refiner checkpoint, bad inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_cli.training.checkpoint import make_checkpoint, save_checkpoint
from tests.conftest import assert_same_weights, interrupted_run, invoke, labelled_shapes, metrics_rows, one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 48x48 shapes images, their seeds (boundary bands and a blob at 255), GT and labels."""
    return labelled_shapes(tmp_path_factory.mktemp("shapes"), 6, 48, NAMES, seed=1)


def train_args(data: Path, golden_weights: Path, out: Path, *extra: object) -> list[object]:
    return [
        "refine", "train", data / "images", data / "masks", "--labels", data / "labels.json", "--classes", ",".join(NAMES),
        "--weights", golden_weights, "--crop", "32", "--scales", "0.75,1", "--batch-size", "2", "--context", "4",
        "--decoder-dim", "16", "--warmup-iters", "0", "--device", "cpu", "--out", out, *extra,
    ]  # fmt: skip


def test_training_loss_halves_then_masks_follow_eq14(data: Path, golden_weights: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = invoke(*train_args(data, golden_weights, run, "--iters", "150", "--lr", "2e-3", "--save-every", "100"))
    assert result.exit_code == 0, result.output
    rows = metrics_rows(run)
    assert [r["iteration"] for r in rows] == list(range(1, 151))
    losses = np.array([r["loss"] for r in rows])
    assert losses[-20:].mean() < 0.5 * losses[:5].mean(), (losses[:5], losses[-20:])
    assert all(r["loss"] == pytest.approx(r["seed_loss"] + r["boundary_loss"], rel=1e-5) for r in rows)
    summary = json.loads((run / "run.json").read_text())
    assert summary["status"] == "finished" and summary["kind"] == "refiner.weakclip" and summary["pairs"] == 6
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"

    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["format"] == "wsss-label-checkpoint" and ckpt["kind"] == "refiner.weakclip"
    assert ckpt["class_names"] == NAMES and ckpt["iteration"] == 150
    assert not any(k.startswith("clip.") for k in ckpt["model"])
    assert ckpt["model_config"]["clip_weights"]["path"] == str(golden_weights.resolve())
    assert ckpt["image_labels"]["s002"] == [1 + NAMES.index(n) for n in json.loads((data / "labels.json").read_text())["s002.png"]]

    # refine predict: the main command's masks, with eq. 14 (only background, the labels, 255)
    out = tmp_path / "pred"
    result = invoke("refine", "predict", data / "images", "--checkpoint", run / "last.pt", "--labels", data / "labels.json",
                    "--out", out, "--scales", "1", "--flip", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = json.loads((data / "labels.json").read_text())
    seen_fg = False
    for name, names in labels.items():
        png = Image.open(out / "masks" / name)
        assert png.mode == "P" and png.size == (48, 48)
        mask = np.asarray(png)
        allowed = {0, 255, *(1 + NAMES.index(n) for n in names)}
        assert set(np.unique(mask).tolist()) <= allowed, name
        seen_fg |= bool(((mask > 0) & (mask < 255)).any())
    assert seen_fg
    report = json.loads((out / "predict.json").read_text())
    assert report["written"] == 6 and report["unlabelled"] == [] and report["kind"] == "refiner.weakclip"

    # the refined masks score against GT and can be retrained on, like the main command's
    evaluated = invoke("eval", out / "masks", data / "gt", "--classes", ",".join(NAMES), "--out", tmp_path / "eval.json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval.json").read_text())["miou"] > 0.5

    # wsss-label predict dispatches on the kind: CLIP from the recorded file, the run's labels for eq. 14
    result = invoke("predict", data / "images", "--checkpoint", run / "last.pt", "--out", tmp_path / "p2", "--scales", "1",
                    "--flip", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in labels:
        a = np.asarray(Image.open(out / "masks" / name))
        b = np.asarray(Image.open(tmp_path / "p2" / "masks" / name))
        assert np.array_equal(a, b), name

    # only some images labelled: the others are skipped and listed
    some = tmp_path / "some.json"
    some.write_text(json.dumps({"s000.png": labels["s000.png"]}))
    result = invoke("refine", "predict", data / "images", "--checkpoint", run / "last.pt", "--labels", some,
                    "--out", tmp_path / "p3", "--scales", "1", "--no-crf", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "p3" / "masks").iterdir()) == ["s000.png"]
    assert len(json.loads((tmp_path / "p3" / "predict.json").read_text())["unlabelled"]) == 5


def test_resume_is_bit_exact(data: Path, golden_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--iters", "8", "--lr", "1e-3", "--save-every", "3", "--warmup-iters", "2"]
    full = invoke(*train_args(data, golden_weights, tmp_path / "full", *common))
    assert full.exit_code == 0, full.output

    cut = interrupted_run(monkeypatch, 4, tmp_path / "cut", lambda: invoke(*train_args(data, golden_weights, tmp_path / "cut", *common)))
    assert "--resume" in cut.output
    again = invoke(*train_args(data, golden_weights, tmp_path / "cut", *common))
    assert again.exit_code == 2 and "--resume" in one_error_line(again)
    changed = invoke(*train_args(data, golden_weights, tmp_path / "cut", "--iters", "9", "--resume"))
    assert changed.exit_code == 2 and "iters" in one_error_line(changed)
    # settings, labels and CLIP weights all come from the run
    resumed = invoke("refine", "train", data / "images", data / "masks", "--out", tmp_path / "cut", "--resume", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output

    a, b = assert_same_weights(tmp_path / "full" / "last.pt", tmp_path / "cut" / "last.pt")
    assert a["iteration"] == b["iteration"] == 8
    assert all({"exp_avg", "exp_avg_sq"} <= set(s) for s in b["optimizer"]["state"].values())
    rows_a, rows_b = metrics_rows(tmp_path / "full"), metrics_rows(tmp_path / "cut")
    assert [r["iteration"] for r in rows_b] == list(range(1, 9))
    for ra, rb in zip(rows_a, rows_b):
        assert (ra["loss"], ra["seed_loss"], ra["boundary_loss"], ra["lr"]) == (
            rb["loss"],
            rb["seed_loss"],
            rb["boundary_loss"],
            rb["lr"],
        )
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "finished"


def test_bad_train_inputs(data: Path, golden_weights: Path, tmp_path: Path) -> None:
    args = train_args(data, golden_weights, tmp_path / "r1", "--iters", "1")
    args[3] = tmp_path / "nope"
    result = invoke(*args)
    assert result.exit_code == 2 and "nope" in one_error_line(result)

    seeds = tmp_path / "seeds"
    shutil.copytree(data / "masks", seeds)
    (seeds / "s003.png").unlink()
    args = train_args(data, golden_weights, tmp_path / "r2", "--iters", "1")
    args[3] = seeds
    result = invoke(*args)
    assert result.exit_code == 2 and "s003.png" in one_error_line(result)

    result = invoke(*train_args(data, golden_weights, tmp_path / "r3", "--iters", "1", "--weights", tmp_path / "none.pt"))
    assert result.exit_code == 2 and "none.pt" in one_error_line(result)

    no_labels = [
        a for a in train_args(data, golden_weights, tmp_path / "r4", "--iters", "1") if a != "--labels" and a != data / "labels.json"
    ]
    result = invoke(*no_labels)
    assert result.exit_code == 2 and "--labels" in one_error_line(result)


def test_bad_predict_inputs(data: Path, golden_weights: Path, other_weights: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert invoke(*train_args(data, golden_weights, run, "--iters", "1")).exit_code == 0

    deeplab = tmp_path / "deeplab.pt"
    save_checkpoint(deeplab, make_checkpoint("deeplabv2", {}, NAMES, {}))
    result = invoke("refine", "predict", data / "images", "--checkpoint", deeplab, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "deeplab.pt" in one_error_line(result)

    result = invoke("refine", "predict", data / "images", "--checkpoint", run / "last.pt", "--weights", other_weights,
                    "--out", tmp_path / "o", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2 and "SHA-256" in one_error_line(result)

    bad_labels = tmp_path / "bad.json"
    bad_labels.write_text(json.dumps({"s000.png": ["purple"]}))
    result = invoke("refine", "predict", data / "images", "--checkpoint", run / "last.pt", "--labels", bad_labels,
                    "--out", tmp_path / "o", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2 and "purple" in one_error_line(result)

    result = invoke("refine", "predict", data / "images", "--checkpoint", tmp_path / "absent.pt", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "absent.pt" in one_error_line(result)
    assert not (tmp_path / "o" / "masks").exists()
