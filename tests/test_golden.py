"""Fidelity: the CLI reproduces the CLIP-ES reference outputs on the golden tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clipseg_cli.io.masks import load_label_map

CAM_TOL = 2e-3
REFINED_TOL = 1e-2
MASK_AGREEMENT = 0.995


@pytest.fixture(scope="module")
def golden_run(golden_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import Cli

    out = tmp_path_factory.mktemp("golden") / "out"
    result = Cli()(
        golden_dir / "images", "--labels", golden_dir / "labels.json", "--out", out,
        "--weights", golden_dir / "weights.pt", "--classes", "voc", "--save-cams", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def expected_map(expected: np.lib.npyio.NpzFile, key: str) -> np.ndarray:
    """A reference map as stored in tests/data/golden (see its README): every second row and
    column, quantised to 1/65535 and kept as second differences; decoded back to float64."""
    return np.cumsum(np.cumsum(expected[f"{key}_q16_d2"].astype(np.int64), axis=-2), axis=-1) / 65535.0


def _stems(golden_dir: Path) -> list[str]:
    return [Path(name).stem for name in json.loads((golden_dir / "labels.json").read_text())]


def test_every_golden_image_is_labelled(golden_run: Path, golden_dir: Path) -> None:
    summary = json.loads((golden_run / "run.json").read_text())
    assert summary["counts"]["labelled"] == len(_stems(golden_dir))
    assert summary["failed"] == [] and summary["skipped"] == []


@pytest.mark.parametrize("stem", ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"])
def test_matches_reference_within_tolerance(golden_run: Path, golden_dir: Path, stem: str) -> None:
    expected = np.load(golden_dir / "expected" / f"{stem}.npz")
    ours = np.load(golden_run / "cams" / f"{stem}.npz")
    np.testing.assert_array_equal(ours["labels"], expected["labels"])
    cam, refined = expected_map(expected, "cam"), expected_map(expected, "refined")
    assert ours["cam"][..., ::2, ::2].shape == cam.shape
    assert ours["cam"].shape[-2:] == expected["mask"].shape
    assert np.abs(ours["cam"][..., ::2, ::2] - cam).max() <= CAM_TOL
    assert np.abs(ours["refined"][..., ::2, ::2] - refined).max() <= REFINED_TOL
    mask = load_label_map(golden_run / "masks" / f"{stem}.png")
    assert mask.shape == expected["mask"].shape
    assert (mask == expected["mask"]).mean() >= MASK_AGREEMENT
    assert set(np.unique(mask)) <= {0, 255, *(1 + int(c) for c in expected["labels"])}
