"""The sharpness metric, Spearman's rho, template files and sampling: pure functions, no model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli import prompt_search as ps
from clipseg_cli.errors import ConfigError
from clipseg_cli.labeling import WorkItem


def test_sharpness_matches_a_hand_computation() -> None:
    # image 1: scores 0.2, 0.4, 0.6 -> mean 0.4, population variance (0.04 + 0 + 0.04) / 3 = 0.08/3
    # image 2: one class, 0.5        -> mean 0.5, variance 0
    # image 3: scores 0.1, 0.3       -> mean 0.2, variance (0.01 + 0.01) / 2 = 0.01
    # sharpness = (0.08/3 + 0 + 0.01) / (0.4 + 0.5 + 0.2) = (0.0366666...) / 1.1 = 0.0333333...
    scores = [np.array([0.2, 0.4, 0.6]), np.array([0.5]), np.array([0.1, 0.3])]
    assert ps.sharpness(scores) == pytest.approx((0.08 / 3 + 0.0 + 0.01) / 1.1, rel=1e-12)
    assert ps.sharpness(scores) == pytest.approx(1.0 / 30.0, rel=1e-12)


def test_sharpness_uses_population_variance_and_equal_scores_give_zero() -> None:
    assert ps.sharpness([np.array([0.3, 0.3, 0.3]), np.array([0.9])]) == 0.0
    # ddof = 0: var(0, 1) = 0.25, not 0.5
    assert ps.sharpness([np.array([0.0, 1.0])]) == pytest.approx(0.25 / 0.5)


def test_sharpness_agrees_with_a_direct_numpy_loop() -> None:
    rng = np.random.default_rng(3)
    scores = [rng.random(rng.integers(1, 6)) for _ in range(200)]
    direct = sum(float(np.var(s)) for s in scores) / sum(float(np.mean(s)) for s in scores)
    assert ps.sharpness(scores) == pytest.approx(direct, rel=1e-12)
    lengths = np.array([len(s) for s in scores])
    assert ps.segment_sharpness(np.concatenate(scores), lengths) == pytest.approx(direct, rel=1e-12)
    assert ps.sharpness([list(s) for s in scores]) == pytest.approx(direct, rel=1e-12)  # plain lists too


def test_sharpness_rejects_empty_input_and_is_nan_for_all_zero_scores() -> None:
    with pytest.raises(ValueError):
        ps.sharpness([])
    with pytest.raises(ValueError):
        ps.sharpness([np.array([0.5]), np.array([])])
    assert math.isnan(ps.sharpness([np.zeros(2)]))


def test_rank_results_is_ascending_stable_and_puts_nan_last() -> None:
    scores = [ps.TemplateScore("c {}", 0.3), ps.TemplateScore("nan {}", math.nan),
              ps.TemplateScore("a {}", 0.1), ps.TemplateScore("b {}", 0.3)]  # fmt: skip
    assert [r.template for r in ps.rank_results(scores)] == ["a {}", "c {}", "b {}", "nan {}"]


def test_spearman_by_hand_with_ties_and_undefined_cases() -> None:
    assert ps.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ps.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # x ranks 1 2 3 4 5, y = (5, 6, 7, 8, 7) ranks 1 2 3.5 5 3.5 (tie: average rank); both means 3.
    # Pearson of the ranks: sum dx*dy = 4 + 1 + 0 + 2 + 1 = 8, sum dx^2 = 10, sum dy^2 = 9.5
    assert ps.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(10 * 9.5))
    assert list(ps.rankdata([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert ps.spearman([1, 2, None, 3], [3, 2, 1, 1]) == pytest.approx(-1.0)  # the None pair is dropped
    assert ps.spearman([1, 1, 1], [1, 2, 3]) is None
    assert ps.spearman([1], [2]) is None


def test_builtin_imagenet80_templates() -> None:
    templates = ps.builtin_templates()
    assert len(templates) == 80 == len(set(templates))
    assert all(t.count("{}") == 1 for t in templates)
    # the list as published in CLIP's Prompt_Engineering_for_ImageNet notebook: first, last and a few between
    assert templates[0] == "a bad photo of a {}."
    assert templates[-1] == "a tattoo of the {}."
    assert templates[35] == "a {} in a video game."
    assert {"itap of a {}.", "itap of my {}.", "a origami {}.", "the origami {}.", "a embroidered {}.",
            "a photo of the hard to see {}.", "a jpeg corrupted photo of the {}."} <= set(templates)  # fmt: skip
    assert ps.load_templates("imagenet80")[0] == templates == ps.load_templates("ImageNet80")[0]


def test_template_files(tmp_path: Path) -> None:
    good = tmp_path / "t.txt"
    good.write_text("# candidates\n\na photo of a {}.\n  a clean origami {}.  \na photo of a {}.\nart {{of}} a {}.\n")
    templates, duplicates = ps.load_templates(str(good))
    assert templates == ["a photo of a {}.", "a clean origami {}.", "art {{of}} a {}."]
    assert duplicates == 1
    cases = {
        "no-braces.txt": ("a photo of a {}.\na photo\n", ":2:"),
        "twice.txt": ("a {} and a {}.\n", ":1:"),
        "named.txt": ("a {name} of a {}.\n", ":1:"),
        "empty.txt": ("# nothing\n\n", "no templates"),
    }
    for name, (text, where) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=where):
            ps.load_templates(str(tmp_path / name))
    with pytest.raises(ConfigError, match="imagenet80"):
        ps.load_templates(str(tmp_path / "absent.txt"))


def test_sample_items_is_seeded_and_keeps_order() -> None:
    items = [WorkItem(f"{i:03d}.jpg", (i % 20,), ("x",)) for i in range(50)]
    a = ps.sample_items(items, 10, seed=4)
    assert a == ps.sample_items(items, 10, seed=4)
    assert len(a) == 10 and len(set(a)) == 10 and a == sorted(a, key=lambda it: it.rel)
    assert a != ps.sample_items(items, 10, seed=5)
    assert ps.sample_items(items, None, seed=0) == items == ps.sample_items(items, 500, seed=0)
