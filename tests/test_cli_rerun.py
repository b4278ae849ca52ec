"""Issue 14, point 2: a rerun into the same --out never mixes two runs' settings.

The settings that decide the outputs are recorded (run.json, predict.json); a rerun with other
ones exits 2 with one line naming each difference, before any model is loaded; --overwrite
redoes everything, and an interrupted --overwrite does not leave the old masks behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.io.masks import load_label_map, save_mask
from tests.conftest import interrupt_labelling_at, make_image, write_labels


@pytest.fixture
def small(tmp_path: Path):
    images = tmp_path / "images"
    make_image(images / "a.png", (40, 56), seed=1)
    make_image(images / "b.png", (48, 40), seed=2)
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"], "b.png": ["dog", "person"]})
    return images, labels


@pytest.fixture
def label(cli, golden_weights: Path, small, tmp_path: Path):
    images, labels = small

    def _label(*extra: str | Path, out: Path | None = None, labels_file: Path | None = None):
        out = out or tmp_path / "out"
        result = cli(images, "--labels", labels_file or labels, "--out", out, "--weights", golden_weights,
                     "--device", "cpu", "--workers", "0", *extra)  # fmt: skip
        run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
        return result, out, run

    return _label


def _no_model(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make loading CLIP fail loudly; returns the list of loads attempted."""
    import clipseg_cli.clip.loading as loading

    calls: list[str] = []

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append("load")
        raise AssertionError("the model must not be loaded")

    monkeypatch.setattr(loading, "load_clip", refuse)
    return calls


def test_other_settings_exit_2_naming_each_difference_before_the_model_loads(label, monkeypatch) -> None:
    result, out, first = label()
    assert result.exit_code == 0, result.output
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()}

    loads = _no_model(monkeypatch)
    result, _, after = label("--mu", "0.5", "--template", "a photo of a {}.")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {out} was made with other settings (")
    assert "mu 0.95 -> 0.5" in lines[0]
    assert "templates ['a clean origami {}.'] -> ['a photo of a {}.']" in lines[0]
    assert "--overwrite" in lines[0]
    assert loads == []  # refused before loading, not after
    assert after == first  # run.json untouched: it still describes the masks
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").iterdir()} == stamps


def test_same_decisive_settings_resume_and_overwrite_redoes_everything(label) -> None:
    result, out, first = label()
    assert result.exit_code == 0
    # Workers, --visualize, --report and the like do not decide the masks: resuming is fine.
    result, _, second = label("--visualize")
    assert result.exit_code == 0, result.output
    assert second["counts"]["already_done"] == 2 and second["counts"]["processed_this_run"] == 0

    result, _, third = label("--mu", "0.5", "--overwrite")
    assert result.exit_code == 0, result.output
    assert third["settings"]["mu"] == 0.5 and third["counts"]["processed_this_run"] == 2
    # ... and from now on the new settings are the run's: resuming with them is fine.
    result, _, fourth = label("--mu", "0.5")
    assert result.exit_code == 0 and fourth["counts"]["already_done"] == 2


def test_a_record_without_a_key_is_read_sensibly(label) -> None:
    """run.json of an older version lacks keys: unknown ones are not compared, known ones still are."""
    result, out, first = label()
    older = json.loads((out / "run.json").read_text())
    for key in ("class_prompts", "class_synonyms", "images_root", "images_from_run"):
        del older["settings"][key]
    (out / "run.json").write_text(json.dumps(older))
    result, _, second = label()
    assert result.exit_code == 0, result.output
    assert second["counts"]["already_done"] == 2
    result, _, _ = label("--lambda", "0.5")
    assert result.exit_code == 2 and "lambda 0.4 -> 0.5" in result.output


def test_an_image_whose_labels_changed_is_redone(label, tmp_path: Path) -> None:
    result, out, first = label()
    relabelled = write_labels(tmp_path / "labels2.json", {"a.png": ["cat", "person"], "b.png": ["dog", "person"]})
    stamp_b = (out / "masks" / "b.png").stat().st_mtime_ns
    result, _, second = label(labels_file=relabelled)
    assert result.exit_code == 0, result.output
    assert second["counts"] == {"labelled": 2, "processed_this_run": 1, "already_done": 1, "skipped": 0, "failed": 0}
    entry = next(e for e in second["images"] if e["image"] == "a.png")
    assert entry["labels"] == ["cat", "person"] and entry["seconds"] is not None
    assert (out / "masks" / "b.png").stat().st_mtime_ns == stamp_b


def test_an_interrupted_overwrite_resumes_without_the_old_masks(label, monkeypatch, tmp_path: Path) -> None:
    result, out, _ = label()  # settings A (mu 0.95)
    seen = interrupt_labelling_at(monkeypatch, 2)
    result, _, interrupted = label("--mu", "0.3", "--overwrite")  # settings B, stopped after one image
    assert result.exit_code == 130
    assert interrupted["settings"]["mu"] == 0.3 and interrupted["interrupted"] is True
    assert not (out / "masks" / seen[1]).exists()  # A's mask did not survive
    monkeypatch.undo()

    result, _, resumed = label("--mu", "0.3")
    assert result.exit_code == 0, result.output
    assert resumed["counts"]["already_done"] == 1 and resumed["counts"]["processed_this_run"] == 1
    # Every mask is now B's: the same as a clean run with B.
    _, clean, _ = label("--mu", "0.3", out=tmp_path / "clean")
    for name in ("a.png", "b.png"):
        np.testing.assert_array_equal(load_label_map(out / "masks" / name), load_label_map(clean / "masks" / name))


@pytest.mark.parametrize("command", [["predict"], ["refine", "predict"]])
def test_predict_reruns_with_other_settings_exit_2_before_reading_the_checkpoint(cli, tmp_path: Path, command: list[str]) -> None:
    """The check runs on the record and the checkpoint's bytes alone: here the checkpoint is not
    even loadable, and the answer is still the settings conflict."""
    from clipseg_cli.clip.pretrained import sha256_of

    make_image(tmp_path / "images" / "a.png", (20, 20))
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"not a checkpoint at all")
    out = tmp_path / "out"
    save_mask(out / "masks" / "a.png", np.zeros((20, 20), np.uint8))
    record = {"command": " ".join(command), "checkpoint_sha256": sha256_of(checkpoint), "scales": [0.75, 1.0, 1.5],
              "flip": False, "crf": True, "labels_sha256": None}  # fmt: skip
    (out / "predict.json").write_text(json.dumps(record))

    result = cli(*command, tmp_path / "images", "--checkpoint", checkpoint, "--out", out, "--scales", "1", "--device", "cpu")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "scales [0.75, 1.0, 1.5] -> [1.0]" in lines[0] and "--overwrite" in lines[0]

    checkpoint.write_bytes(b"another model")
    result = cli(*command, tmp_path / "images", "--checkpoint", checkpoint, "--out", out, "--scales", "0.75,1,1.5",
                 "--device", "cpu")  # fmt: skip
    assert result.exit_code == 2 and "checkpoint_sha256" in result.output

    # --overwrite skips the check (and then reading the checkpoint fails on its own).
    result = cli(*command, tmp_path / "images", "--checkpoint", checkpoint, "--out", out, "--overwrite", "--device", "cpu")
    assert result.exit_code == 2 and "other settings" not in result.output


def test_differences_with_defaults_nested_keys_and_json_types() -> None:
    from clipseg_cli.run_settings import Decisive, describe, differences

    decisive = (Decisive("mu"), Decisive("templates"), Decisive("crf_backend", "pydensecrf"), Decisive("weights.sha256"),
                Decisive("class_prompts"))  # fmt: skip
    old = {"mu": 0.95, "templates": ["a {}."], "weights": {"path": "/x.pt", "sha256": "ab" * 32}}  # an older record
    new = {"mu": 0.95, "templates": ("a {}.",), "crf_backend": "pydensecrf", "weights": {"path": "/y.pt", "sha256": "ab" * 32},
           "class_prompts": ["cat"]}  # fmt: skip
    assert differences(old, new, decisive) == []  # tuple == list; the missing backend had the default; no prompts: unknown
    new = {**new, "crf_backend": "torch", "weights": {"sha256": "cd" * 32}}
    diffs = differences(old, new, decisive)
    assert diffs == [("crf_backend", "pydensecrf", "torch"), ("weights.sha256", "ab" * 32, "cd" * 32)]
    assert describe(diffs) == "crf_backend 'pydensecrf' -> 'torch', weights.sha256 abababababab -> cdcdcdcdcdcd"
