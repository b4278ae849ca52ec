"""Training honours the review (issue 20, point 2): every training command takes ``--review FILE``
(and ``retrain`` / ``refine train`` use ``MASKS/../review.json`` when it exists, saying so); images
marked rejected are left out of the training data, and run.json records how many and which file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from benchmarks.train_gpu_smoke import command_line, make_inputs
from clipseg_cli import methods
from tests.conftest import Cli, interrupted_run, one_error_line

pytestmark = pytest.mark.usefixtures("one_torch_thread")
METHODS = sorted(methods.all_methods())


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_inputs(tmp_path_factory.mktemp("review-smoke"), "tiny")


def _review(path: Path, marks: dict[str, str]) -> Path:
    path.write_text(json.dumps({"kind": "review", "version": 1, "marks": {k: {"mark": m} for k, m in marks.items()}}))
    return path


def _images(inputs: dict[str, Path]) -> list[str]:
    return sorted(p.name for p in (inputs["data"] / "images").iterdir())


@pytest.mark.parametrize("name", METHODS)
def test_rejected_images_are_left_out_of_every_training_command(name: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    images = _images(inputs)
    assert len(images) == 8
    rejected = images[1:4]
    marks = {**{r: "rejected" for r in rejected}, images[4]: "fix", images[5]: "accepted"}  # fix and accepted stay
    review = _review(tmp_path / "marks.json", marks)
    result = Cli()(*command_line(name, "tiny", inputs, tmp_path / "run", "cpu", "fp32", 1), "--review", review)
    assert result.exit_code == 0, result.output
    assert f"review: {review}: 3 image(s) marked rejected are left out of training" in result.output
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    stems = sorted(r.rsplit(".", 1)[0] for r in rejected)
    assert summary["review"] == {"file": str(review.resolve()), "found": "--review", "rejected": 3, "left_out": 3,
                                 "left_out_images": stems}  # fmt: skip
    # The training data itself: the checkpoint counts the samples the run drew from.
    method = methods.METHODS[name]
    ckpt = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt[method.samples_key] == 5
    if "image_labels" in ckpt:  # methods that keep their training images' labels
        assert sorted(ckpt["image_labels"]) == sorted(r.rsplit(".", 1)[0] for r in images if r not in rejected)


def test_retrain_uses_the_review_beside_the_masks_and_refuses_bad_ones(inputs: dict[str, Path], tmp_path: Path) -> None:
    images = _images(inputs)
    run_out = tmp_path / "label-out"  # a label run's OUT: masks/ and review.json side by side
    shutil.copytree(inputs["data"] / "masks", run_out / "masks")
    _review(run_out / "review.json", {images[0]: "rejected", images[7]: "rejected"})
    base = command_line("deeplabv2", "tiny", inputs, tmp_path / "run", "cpu", "fp32", 1)
    base[2] = str(run_out)  # MASKS: the label run's OUT (its masks/ is used)
    cli = Cli()
    result = cli(*base)
    assert result.exit_code == 0, result.output
    assert f"review: {run_out / 'review.json'} (MASKS/../review.json): 2 image(s) marked rejected" in result.output
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["review"]["found"] == "beside the masks" and summary["review"]["left_out"] == 2
    assert summary["pairs"] == 6

    # Without a review there is nothing to record.
    plain = command_line("deeplabv2", "tiny", inputs, tmp_path / "plain", "cpu", "fp32", 1)
    result = cli(*plain)
    assert result.exit_code == 0 and json.loads((tmp_path / "plain" / "run.json").read_text())["review"] is None

    everything = _review(tmp_path / "all.json", dict.fromkeys(images, "rejected"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "review", "version": 1, "marks": {"x.png": {"mark": "nope"}}}')
    for review, message in ((tmp_path / "missing.json", "no such file"), (everything, "rejects every training image"),
                            (bad, "must be one of accepted, rejected, fix")):  # fmt: skip
        result = cli(*command_line("deeplabv2", "tiny", inputs, tmp_path / review.stem, "cpu", "fp32", 1), "--review", review)
        assert result.exit_code == 2, result.output
        assert message in one_error_line(result)


def test_resume_keeps_the_runs_review(inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = _images(inputs)
    first = _review(tmp_path / "first.json", {images[2]: "rejected"})
    other = _review(tmp_path / "other.json", {images[3]: "rejected"})
    cli = Cli()
    run = command_line("deeplabv2", "tiny", inputs, tmp_path / "run", "cpu", "fp32", 2)
    interrupted_run(monkeypatch, 1, tmp_path / "run", lambda: cli(*run, "--review", first))
    refused = cli(*run, "--resume", "--review", other)
    assert refused.exit_code == 2 and "review" in one_error_line(refused)
    resumed = cli(*run, "--resume")  # no --review: the run's own
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["iteration"] == 2 and summary["review"]["file"] == str(first.resolve())
    assert summary["review"]["left_out_images"] == [images[2].rsplit(".", 1)[0]]
