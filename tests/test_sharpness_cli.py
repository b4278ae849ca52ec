"""`wsss-label sharpness` end to end: report, table, plot, hint, --limit/--seed, --gt, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_cli import prompt_search as ps
from tests.conftest import make_image, write_labels

FEW = ["a clean origami {}.", "a photo of a {}.", "art of the [bold]{}[/bold]."]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def few_templates(tmp_path: Path) -> Path:
    path = tmp_path / "templates.txt"
    path.write_text("# three candidates\n" + "\n".join(FEW) + "\n")
    return path


@pytest.fixture
def small_set(tmp_path: Path) -> tuple[Path, Path]:
    """Six small images with VOC labels, one of them unlabelled."""
    images = tmp_path / "small"
    labels = {}
    names = [["cat"], ["dog", "person"], ["car", "bus", "person"], ["bottle"], ["horse", "person"], ["train"]]
    for i, names_i in enumerate(names):
        make_image(images / f"im{i}.png", (30 + 7 * i, 50 - 3 * i), seed=i)
        labels[f"im{i}.png"] = names_i
    make_image(images / "extra.png", (20, 20), seed=9)
    return images, write_labels(tmp_path / "small.json", labels)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error:" in line]


def test_report_table_plot_and_hint(cli, golden_dir: Path, golden_weights: Path, few_templates: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "r" / "report.json", tmp_path / "p" / "ranking.png"
    result = cli("sharpness", golden_dir / "images", "--labels", golden_dir / "labels.json", "--weights", golden_weights,
                 "--templates", few_templates, "--out", out, "--plot", plot, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    results = report["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert sorted(r["template"] for r in results) == sorted(FEW)
    values = [r["sharpness"] for r in results]
    assert values == sorted(values) and all(isinstance(v, float) and v > 0 for v in values)
    assert set(results[0]) == {"rank", "template", "sharpness"}
    assert report["best"] == {"template": results[0]["template"], "sharpness": values[0]}
    assert report["n_images"] == 5 and report["images"] == sorted(json.loads((golden_dir / "labels.json").read_text()))
    assert report["failed"] == [] and "gt" not in report
    settings = report["settings"]
    assert settings["templates"] == str(few_templates) and settings["n_templates"] == 3
    assert settings["limit"] is None and settings["classes"] == "voc" and len(settings["class_names"]) == 20
    assert "person with clothes,people,human" in settings["class_prompts"]
    assert len(settings["weights"]["sha256"]) == 64
    assert set(report["seconds"]) == {"image_embeddings", "templates"}
    # the plot: a PNG Pillow can read
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size[0] > 100
    # the table shows every template literally (no Rich markup applied), then the winner's command line
    for template in FEW:
        assert template in result.output
    best = results[0]["template"]
    assert f'--template "{best}"' in result.output
    assert "--classes voc" in result.output and str(golden_weights) in result.output
    assert not list(tmp_path.rglob("*.part"))


def test_default_imagenet80_on_one_image(cli, golden_dir: Path, golden_weights: Path, tmp_path: Path) -> None:
    labels = write_labels(tmp_path / "one.json", {"chelsea.png": ["cat"], "coffee.png": ["diningtable", "bottle"]})
    result = cli("sharpness", golden_dir / "images", "--labels", labels, "--weights", golden_weights,
                 "--out", "-", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["templates"] == "imagenet80" and report["n_images"] == 2
    templates = [r["template"] for r in report["results"]]
    assert len(templates) == 80 and set(templates) == set(ps.builtin_templates())
    values = [r["sharpness"] for r in report["results"]]
    assert values == sorted(values)
    assert report["skipped_unlabelled"] == 3


def test_limit_and_seed_are_reproducible(cli, other_weights: Path, small_set, few_templates: Path, tmp_path: Path) -> None:
    images, labels = small_set

    def run(seed: int, name: str) -> dict:
        out = tmp_path / f"{name}.json"
        result = cli("sharpness", images, "--labels", labels, "--weights", other_weights, "--templates", few_templates,
                     "--limit", "3", "--seed", str(seed), "--out", out, "--device", "cpu")  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "sample: 3 of 6 labelled images" in result.output
        return json.loads(out.read_text())

    first, again, other = run(1, "a"), run(1, "b"), run(2, "c")
    assert first["images"] == again["images"] and first["results"] == again["results"]
    assert len(first["images"]) == 3 and first["images"] == sorted(first["images"])
    assert "extra.png" not in first["images"]  # only labelled images are drawn
    assert other["images"] != first["images"]
    assert first["settings"]["limit"] == 3 and first["settings"]["seed"] == 1
    # the sample is the documented one: numpy's default_rng(seed).choice over the sorted labelled images
    labelled = sorted(f"im{i}.png" for i in range(6))
    rng = np.random.default_rng(1)
    assert first["images"] == [labelled[i] for i in sorted(rng.choice(6, size=3, replace=False))]


def test_gt_mode_reports_miou_and_rank_correlation(cli, golden_dir: Path, golden_weights: Path, few_templates: Path,
                                                   tmp_path: Path) -> None:  # fmt: skip
    gt = tmp_path / "gt"
    gt.mkdir()
    mask = np.load(golden_dir / "expected" / "chelsea.npz")["mask"]
    Image.fromarray(mask).save(gt / "chelsea.png")  # GT for one image only: the others are scored by sharpness alone
    out, plot = tmp_path / "gt-report.json", tmp_path / "gt-plot.png"
    result = cli("sharpness", golden_dir / "images", "--labels", golden_dir / "labels.json", "--weights", golden_weights,
                 "--templates", few_templates, "--gt", gt, "--out", out, "--plot", plot, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["n_images"] == 5
    assert report["gt"]["n_images"] == 1 and report["gt"]["images"] == ["chelsea.png"]
    mious = {r["template"]: r["miou"] for r in report["results"]}
    assert all(0.0 <= m <= 1.0 for m in mious.values())
    # the GT is the golden pseudo mask made with "a clean origami {}.": the full pipeline reproduces it
    assert mious["a clean origami {}."] > 0.99
    rho = report["gt"]["spearman"]
    assert rho == pytest.approx(ps.spearman([r["sharpness"] for r in report["results"]], list(mious.values())))
    assert "mIoU %" in result.output and "Spearman" in result.output
    assert report["settings"]["gt"] == str(gt) and report["settings"]["crf"] is True
    assert "gt_pipeline" in report["seconds"] and plot.stat().st_size > 0


def test_unreadable_and_missing_images_are_left_out_with_exit_1(cli, other_weights: Path, few_templates: Path,
                                                                tmp_path: Path) -> None:  # fmt: skip
    images = tmp_path / "images"
    make_image(images / "ok.png", (40, 40))
    make_image(images / "sub" / "ok2.jpg", (30, 50), seed=1)
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    labels = write_labels(tmp_path / "l.json", {"ok.png": ["cat"], "sub/ok2": ["dog", "cat"], "broken.jpg": ["cat"],
                                                "gone.jpg": ["dog"]})  # fmt: skip
    out = tmp_path / "r.json"
    result = cli("sharpness", images, "--labels", labels, "--weights", other_weights, "--templates", few_templates,
                 "--out", out, "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert report["images"] == ["ok.png", "sub/ok2.jpg"]
    assert {f["image"] for f in report["failed"]} == {"broken.jpg", "gone.jpg"}
    assert len(report["results"]) == 3
    assert "left out" in result.output


def test_voc_annotations_give_the_labels(cli, other_weights: Path, few_templates: Path, tmp_path: Path) -> None:
    images, ann = tmp_path / "JPEGImages", tmp_path / "Annotations"
    ann.mkdir()
    for stem, objects in {"a": ["cat", "person", "cat"], "b": ["car"]}.items():
        make_image(images / f"{stem}.jpg", (32, 48))
        names = "".join(f"<object><name>{o}</name></object>" for o in objects)
        (ann / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{names}</annotation>")
    result = cli("sharpness", images, "--annotations", ann, "--weights", other_weights, "--templates", few_templates,
                 "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"--annotations {ann}" in result.output and "2 images" in result.output


@pytest.mark.parametrize(
    "case",
    ["no-braces", "empty-templates", "missing-templates", "unknown-class", "no-labelled-images", "limit-0",
     "no-crf-without-gt", "gt-without-matches", "gt-not-a-folder", "labels-and-annotations", "neither",
     "out-is-folder", "no-image-folder", "weights-missing", "max-side", "negative-seed"],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(cli, case: str, small_set, few_templates: Path, other_weights: Path,
                                          tmp_path: Path) -> None:  # fmt: skip
    images, labels = small_set
    templates: Path | str = few_templates
    extra: list[str | Path] = []
    weights: Path = other_weights
    if case == "no-braces":
        templates = tmp_path / "bad.txt"
        templates.write_text("a photo of a {}.\na photo of a cat.\n")
    elif case == "empty-templates":
        templates = tmp_path / "empty.txt"
        templates.write_text("# only a comment\n\n")
    elif case == "missing-templates":
        templates = tmp_path / "nope.txt"
    elif case == "unknown-class":
        labels = write_labels(tmp_path / "u.json", {"im0.png": ["cat", "unicorn"]})
    elif case == "no-labelled-images":
        labels = write_labels(tmp_path / "n.json", {"elsewhere/x.jpg": ["cat"]})
    elif case == "limit-0":
        extra = ["--limit", "0"]
    elif case == "no-crf-without-gt":
        extra = ["--no-crf"]
    elif case == "gt-without-matches":
        (tmp_path / "gt").mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "gt" / "other.png")
        extra = ["--gt", tmp_path / "gt"]
    elif case == "gt-not-a-folder":
        extra = ["--gt", tmp_path / "missing-gt"]
    elif case == "labels-and-annotations":
        extra = ["--annotations", tmp_path]
    elif case == "out-is-folder":
        extra = ["--out", tmp_path]
    elif case == "no-image-folder":
        images = tmp_path / "no-such-folder"
    elif case == "weights-missing":
        weights = tmp_path / "absent.pt"
    elif case == "max-side":
        extra = ["--max-side", "8"]
    elif case == "negative-seed":
        extra = ["--limit", "2", "--seed", "-1"]
    args: list[str | Path] = ["sharpness", images, "--templates", templates, "--weights", weights, "--device", "cpu"]
    if case != "neither":
        args += ["--labels", labels]
    result = cli(*args, *extra)
    assert result.exit_code == 2, result.output
    assert len(_error_lines(result.output)) == 1, result.output
    assert "Traceback" not in result.output
    if case == "no-braces":
        assert "bad.txt:2" in result.output
    if case == "unknown-class":
        assert "unicorn" in result.output and "aeroplane" in result.output
