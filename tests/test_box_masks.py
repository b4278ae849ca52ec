"""The tensor box masks (for the GPU) equal the reference's OpenCV ones, map by map and many at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipseg_cli.cam import caa
from clipseg_cli.cam.caa import box_mask, box_masks, box_masks_torch


def _torch_masks(maps: list[np.ndarray], lam: float) -> np.ndarray:
    return box_masks_torch(torch.from_numpy(np.stack(maps)), lam).numpy()


def _spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral from the corner inwards: one component, a path of about n*n/2 pixels."""
    grid = np.zeros((n, n), np.float32)
    y, x, d = 0, 0, 0
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    grid[y, x] = 1

    def free(r: int, c: int) -> bool:
        return 0 <= r < n and 0 <= c < n and grid[r, c] == 0

    while True:
        for _ in range(2):  # straight on, else turn right once
            dy, dx = steps[d]
            ahead = (y + 2 * dy, x + 2 * dx)
            if free(y + dy, x + dx) and not (0 <= ahead[0] < n and 0 <= ahead[1] < n and grid[ahead] == 1):
                y, x = y + dy, x + dx
                grid[y, x] = 1
                break
            d = (d + 1) % 4
        else:
            return grid


def _adversarial() -> list[np.ndarray]:
    maps = []
    ring = np.zeros((9, 9), np.float32)
    ring[1:8, 1:8] = 1.0
    ring[3:6, 3:6] = 0.0  # a hole
    ring[4, 4] = 0.9  # an island inside the hole
    maps.append(ring)
    diagonal = np.zeros((8, 10), np.float32)
    diagonal[1:3, 1:3] = 1.0
    diagonal[3:5, 3:6] = 0.8  # touches the first blob only at a corner: one 8-connected component
    diagonal[6, 8] = 0.7  # a single pixel apart
    maps.append(diagonal)
    singles = np.zeros((7, 7), np.float32)
    singles[0, 0] = singles[2, 4] = singles[6, 6] = singles[6, 2] = singles[3, 6] = 1.0
    maps.append(singles)
    maps.append(np.zeros((5, 6), np.float32))  # all zero: no box
    maps.append(np.full((5, 6), 0.5, np.float32))  # all equal: one box over everything
    last_row = np.zeros((6, 6), np.float32)
    last_row[5, 1:4] = 1.0  # only on the last row: its clipped box is empty
    last_row[1:5, 5] = 0.6  # only on the last column
    maps.append(last_row)
    near = np.array([[0.4, 0.4 + 1 / 255, 0.4 - 1 / 255], [1.0, 0.0, 0.16], [0.159, 0.161, 0.5]], np.float32)
    maps.append(near)  # scores on both sides of the threshold
    maps.append(_spiral(11))
    maps.append(np.linspace(0, 1, 12, dtype=np.float32)[None])  # one row
    maps.append(np.linspace(1, 0, 9, dtype=np.float32)[:, None])  # one column
    return maps


@pytest.mark.parametrize("lam", [0.0, 0.4, 0.7, 0.95])
def test_adversarial_grids_match_opencv(lam: float) -> None:
    for grid in _adversarial():
        expected = box_mask(grid, lam)
        got = _torch_masks([grid], lam)[0]
        np.testing.assert_array_equal(got, expected, err_msg=f"lam {lam}, grid\n{grid}")


def test_diagonal_touch_is_one_component_by_hand() -> None:
    grid = np.zeros((8, 10), np.float32)
    grid[1:3, 1:3] = 1.0
    grid[3:5, 3:6] = 1.0
    expected = np.zeros_like(grid)
    expected[1:5, 1:6] = 1.0  # one box around both blobs, as 8-connectivity joins them
    np.testing.assert_array_equal(_torch_masks([grid], 0.4)[0], expected)


def test_long_spiral_converges_over_many_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caa, "BOX_STEPS_PER_CHECK", 2)  # many convergence rounds
    grid = _spiral(13)
    grid[12, 0] = 1.0  # a second component in the corner
    for lam in (0.4, 0.0):
        np.testing.assert_array_equal(_torch_masks([grid], lam)[0], box_mask(grid, lam))


def test_many_random_grids_at_once_match_opencv_one_by_one() -> None:
    rng = np.random.default_rng(0)
    for trial in range(120):
        height, width = (int(v) for v in rng.integers(1, 16, 2))
        kind = trial % 3
        if kind == 0:
            maps = rng.random((5, height, width))
        elif kind == 1:  # sparse blobs of random heights
            maps = (rng.random((5, height, width)) < rng.random()) * rng.random((5, height, width))
        else:  # few levels: many ties at the threshold
            maps = np.round(rng.random((5, height, width)) * 3) / 3
        maps = maps.astype(np.float32)
        lam = float(rng.choice([0.0, 0.4, 0.7, rng.random()]))
        got = _torch_masks(list(maps), lam)
        for k, grid in enumerate(maps):
            np.testing.assert_array_equal(got[k], box_mask(grid, lam), err_msg=f"trial {trial}, map {k}")


def test_box_masks_on_cpu_uses_opencv_and_handles_no_maps() -> None:
    maps = np.random.default_rng(1).random((3, 6, 7)).astype(np.float32)
    got = box_masks(torch.from_numpy(maps), 0.4).numpy()
    np.testing.assert_array_equal(got, np.stack([box_mask(m, 0.4) for m in maps]))
    assert box_masks(torch.zeros(0, 4, 5), 0.4).shape == (0, 4, 5)
    assert box_masks_torch(torch.zeros(0, 4, 5), 0.4).shape == (0, 4, 5)
