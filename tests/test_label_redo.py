"""`wsss-label IMAGES ... --redo rejected|fix --review FILE`: relabel only the marked images into the
same --out, with other settings, keeping the other masks; run.json says which settings made each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import interrupt_labelling_at, make_image, write_labels

NEW_TEMPLATE = "a photo of a {}."


@pytest.fixture
def three(tmp_path: Path):
    images = tmp_path / "images"
    make_image(images / "a.png", (40, 56), seed=1)
    make_image(images / "b.png", (48, 40), seed=2)
    make_image(images / "c.png", (44, 44), seed=3)
    labels = write_labels(tmp_path / "labels.json", {"a.png": ["cat"], "b.png": ["dog", "person"], "c.png": ["dog"]})
    return images, labels


@pytest.fixture
def label(cli, golden_weights: Path, three, tmp_path: Path):
    images, labels = three

    def _label(*extra: str | Path, out: Path | None = None):
        out = out or tmp_path / "out"
        result = cli(images, "--labels", labels, "--out", out, "--weights", golden_weights, "--device", "cpu",
                     "--workers", "0", *extra)  # fmt: skip
        run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else None
        return result, out, run

    return _label


def _review(path: Path, marks: dict[str, str]) -> Path:
    path.write_text(json.dumps({"kind": "review", "version": 1, "marks": {k: {"mark": m} for k, m in marks.items()}}))
    return path


def _masks(out: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted((out / "masks").iterdir())}


def test_redo_relabels_only_the_rejected_with_other_settings(label, tmp_path: Path) -> None:
    result, out, base = label()
    assert result.exit_code == 0, result.output
    before = _masks(out)
    _review(out / "review.json", {"a.png": "rejected", "b.png": "fix", "c.png": "accepted"})

    result, _, run = label("--redo", "rejected", "--template", NEW_TEMPLATE, "--lambda", "0.3")
    assert result.exit_code == 0, result.output
    assert f"review: {out / 'review.json'}" in result.output  # the default file, said
    assert "redo: 1 image(s) marked rejected are relabelled with" in result.output
    assert "lambda 0.4 -> 0.3" in result.output and "2 other mask(s) kept" in result.output

    after = _masks(out)
    assert after["b.png"] == before["b.png"] and after["c.png"] == before["c.png"]  # untouched
    # a's new mask is the one a whole run with the redo's settings makes.
    result, fresh, _ = label("--template", NEW_TEMPLATE, "--lambda", "0.3", out=tmp_path / "fresh")
    assert result.exit_code == 0
    assert after["a.png"][0] == (fresh / "masks" / "a.png").read_bytes()
    assert after["a.png"][0] != before["a.png"][0]  # the settings matter for this image

    # run.json: the base settings stay; the redo is recorded and a's entry points at it.
    assert run["settings"] == base["settings"]
    (redo,) = run["redos"]
    assert redo["n"] == 1 and redo["mark"] == "rejected" and redo["images"] == 1
    assert redo["review"] == str((out / "review.json").resolve())
    assert redo["changed"] == {"templates": [NEW_TEMPLATE], "lambda": 0.3}
    assert redo["settings"]["templates"] == [NEW_TEMPLATE] and redo["settings"]["lambda"] == 0.3
    entries = {e["image"]: e for e in run["images"]}
    assert entries["a.png"]["redo"] == 1 and "redo" not in entries["b.png"] and "redo" not in entries["c.png"]
    assert entries["b.png"] == {e["image"]: e for e in base["images"]}["b.png"]

    # The gallery tells which images a redo made, and with what.
    from clipseg_cli.report import build
    from tests.test_report_data import page_json

    page = page_json(build(out, workers=1).index)
    assert {r["image"]: r["redo"] for r in page["images"]} == {"a.png": 1, "b.png": None, "c.png": None}
    assert page["redos"][0]["changed"] == redo["changed"]

    # A plain rerun still resumes against the base settings and keeps the redo's record.
    result, _, again = label()
    assert result.exit_code == 0, result.output
    assert "resuming: 3 image(s) already have masks" in result.output
    assert _masks(out) == after and again["redos"] == run["redos"]
    # ... and a plain rerun with the redo's settings is a conflict, as any other.
    result, _, _ = label("--template", NEW_TEMPLATE, "--lambda", "0.3")
    assert result.exit_code == 2 and "was made with other settings" in result.output

    # A second redo (fix, from another file) adds record 2; redoing a with the base settings
    # again drops record 1, which no entry uses any more.
    other = _review(tmp_path / "elsewhere.json", {"b.png": "fix"})
    result, _, run = label("--redo", "fix", "--review", other, "--template", NEW_TEMPLATE)
    assert result.exit_code == 0, result.output
    assert [r["n"] for r in run["redos"]] == [1, 2]
    assert {e["image"]: e.get("redo") for e in run["images"]} == {"a.png": 1, "b.png": 2, "c.png": None}
    result, _, run = label("--redo", "rejected")
    assert result.exit_code == 0, result.output
    assert "with the run's settings" in result.output
    assert [(r["n"], r["changed"]) for r in run["redos"]] == [(2, {"templates": [NEW_TEMPLATE]}), (3, {})]
    assert (out / "masks" / "a.png").read_bytes() == before["a.png"][0]  # the base settings' mask again


def test_redo_refuses_what_it_cannot_do(label, tmp_path: Path, monkeypatch) -> None:
    result, out, _ = label("--redo", "rejected", "--review", _review(tmp_path / "r.json", {"a.png": "rejected"}))
    assert result.exit_code == 2 and "--redo needs an earlier run" in result.output
    result, out, base = label()
    assert result.exit_code == 0
    cases = [
        (("--redo", "rejected"), "no review file"),
        (("--review", tmp_path / "r.json"), "--review needs --redo"),
        (("--redo", "rejected", "--overwrite", "--review", tmp_path / "r.json"), "give one of them"),
        (("--redo", "maybe"), "maybe"),
        (("--redo", "rejected", "--review", tmp_path / "missing.json"), "no such file"),
        (("--redo", "rejected", "--review", tmp_path / "r.json", "--classes", "cat,dog,person"), "keeps the classes"),
    ]
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "review", "version": 1, "marks": {"a.png": {"mark": "great"}}}')
    cases.append((("--redo", "rejected", "--review", bad), "must be one of accepted, rejected, fix"))
    stamps = _masks(out)
    for args, message in cases:
        result, _, run = label(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, result.output)
        assert run == base and _masks(out) == stamps

    # Nothing marked: nothing relabelled, exit 0; a marked image that is not in the run is named.
    _review(out / "review.json", {"c.png": "accepted", "gone.png": "rejected"})
    result, _, run = label("--redo", "rejected")
    assert result.exit_code == 0, result.output
    assert "redo: 0 image(s) marked rejected" in result.output
    assert "1 image(s) marked rejected are not labelled images of this run (e.g. gone.png)" in result.output
    assert _masks(out) == stamps and "redos" not in run


def test_an_interrupted_redo_leaves_no_mask_its_record_does_not_explain(label, monkeypatch) -> None:
    result, out, base = label()
    assert result.exit_code == 0
    _review(out / "review.json", {"a.png": "rejected", "b.png": "rejected"})
    calls = interrupt_labelling_at(monkeypatch, 2)
    result, _, run = label("--redo", "rejected", "--template", NEW_TEMPLATE)
    assert result.exit_code == 130
    entries = {e["image"]: e for e in run["images"]}
    assert calls == ["a.png", "b.png"]
    assert entries["a.png"]["redo"] == 1 and (out / "masks" / "a.png").is_file()
    # b was not redone: neither its old mask (other settings than the record would say) nor an entry.
    assert "b.png" not in entries and not (out / "masks" / "b.png").exists()
    assert run["redos"][0]["images"] == 1 and run["state"] == "interrupted"
    monkeypatch.undo()
    result, _, run = label("--redo", "rejected", "--template", NEW_TEMPLATE)  # the same redo finishes it
    assert result.exit_code == 0, result.output
    assert {e["image"]: e.get("redo") for e in run["images"]} == {"a.png": 2, "b.png": 2, "c.png": None}
    assert [r["n"] for r in run["redos"]] == [2]
