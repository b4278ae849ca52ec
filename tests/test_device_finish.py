"""The device finish path (run here on CPU tensors) against the CPU one: OpenCV resizing, label maps,
and whole images through ``finish`` (pydensecrf) vs ``finish_on_device`` (the same CRF behind tensors)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from clipseg_cli.cam.device_finish import (
    DeviceImage,
    HostCopy,
    finish_on_device,
    label_map_torch,
    pydensecrf_on_tensors,
    resize_bilinear,
    resize_nearest,
)
from clipseg_cli.cam.pipeline import CLIPESSettings, finish, prepare
from clipseg_cli.postprocess.labelmap import label_map

SIZES = [((3, 4), (70, 90)), ((5, 7), (75, 101)), ((12, 9), (190, 141)), ((4, 4), (4, 4)), ((6, 8), (5, 13))]


@pytest.mark.parametrize("grid, size", SIZES)
def test_bilinear_resize_matches_opencv(grid: tuple[int, int], size: tuple[int, int]) -> None:
    maps = np.random.default_rng(0).random((3, *grid)).astype(np.float32)
    height, width = size
    expected = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps])
    got = resize_bilinear(torch.from_numpy(maps), height, width).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_nearest_resize_equals_opencv_exactly() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):
        src = tuple(int(v) for v in rng.integers(1, 60, 2))
        dst = tuple(int(v) for v in rng.integers(1, 200, 2))
        labels = rng.integers(0, 21, src).astype(np.uint8)
        expected = cv2.resize(labels, (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resize_nearest(torch.from_numpy(labels), *dst).numpy(), expected)


def test_label_map_equals_numpy_with_ties_and_threshold() -> None:
    rng = np.random.default_rng(2)
    scores = np.round(rng.random((4, 30, 40)) * 4) / 4  # many ties: the first channel wins in both
    scores = scores.astype(np.float32)
    keys = [0, 3, 15, 7]
    lut = torch.tensor(keys, dtype=torch.uint8)
    for mu in (None, 0.6):
        mask, confidence = label_map(scores, keys, mu)
        got_mask, got_confidence = label_map_torch(torch.from_numpy(scores), lut, mu)
        np.testing.assert_array_equal(got_mask.numpy(), mask)
        np.testing.assert_array_equal(got_confidence.numpy(), confidence)
    assert (mask == 255).any() and set(np.unique(mask)) <= {255, *keys}


def _smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(2, height // 8), max(2, width // 8), 3), np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize("crf", [True, False])
@pytest.mark.parametrize("size, max_side", [((70, 90), 1024), ((60, 200), 128)])  # the second is scaled down
def test_device_finish_matches_cpu_finish(crf: bool, size: tuple[int, int], max_side: int) -> None:
    settings = CLIPESSettings(crf=crf, max_side=max_side)
    image = _smooth_image(*size, seed=3)
    prepared = prepare(image, settings)
    grid = (prepared.pixels.shape[0] // 16, prepared.pixels.shape[1] // 16)
    rng = np.random.default_rng(4)
    labels = [14, 7]
    grid_cam = rng.random((2, *grid)).astype(np.float32)
    grid_refined = rng.random((2, *grid)).astype(np.float32) ** 2
    expected = finish(prepared, grid_cam, grid_refined, labels, settings)

    lut = torch.tensor([0, *(1 + c for c in labels)], dtype=torch.uint8)
    other = DeviceImage((40, 30), (40, 30), torch.zeros(40, 30, 3, dtype=torch.uint8), lut[:2])  # a second image
    device_image = DeviceImage(image.shape[:2], prepared.work.shape[:2], torch.from_numpy(prepared.work), lut)
    done, _ = finish_on_device(
        [device_image, other],
        [(torch.from_numpy(grid_cam), torch.from_numpy(grid_refined)), (torch.rand(1, 3, 2), torch.rand(1, 3, 2))],
        pydensecrf_on_tensors if crf else None, settings.crf_params, settings.mu, True,
    )  # fmt: skip
    assert done.mask.dtype == torch.uint8 and done.mask.shape == image.shape[:2]
    assert (done.mask.numpy() == expected.mask).mean() >= 0.999
    np.testing.assert_allclose(done.cam.numpy(), expected.cam, atol=1e-5, rtol=0)
    np.testing.assert_allclose(done.refined.numpy(), expected.refined, atol=1e-5, rtol=0)
    if crf:
        assert expected.confidence is not None and done.confidence is not None
        # the CRF turns input differences of 1e-6 (bilinear rounding) into about 1e-4
        np.testing.assert_allclose(done.confidence.numpy(), expected.confidence, atol=1e-3, rtol=0)
        assert (expected.mask == 255).any()  # the threshold matters in this case
    else:
        assert done.confidence is None and expected.confidence is None


def test_device_finish_keeps_only_what_is_asked_for() -> None:
    cam = torch.rand(1, 3, 4)
    image = DeviceImage((40, 50), (40, 50), None, torch.tensor([0, 9], dtype=torch.uint8))
    params = CLIPESSettings().crf_params
    (done,) = finish_on_device([image], [(cam, cam)], None, params, 0.95, keep_maps=False)
    assert done.cam is None and done.refined is None and done.confidence is None
    assert set(np.unique(done.mask.numpy())) <= {0, 9}
    with pytest.raises(ValueError, match="needs the images"):
        finish_on_device([image], [(cam, cam)], pydensecrf_on_tensors, params, 0.95, False)


def test_host_copy_returns_the_arrays_and_keeps_gaps() -> None:
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    b = torch.ones(4, dtype=torch.uint8)
    got = HostCopy([a, None, b]).wait()
    assert got[1] is None
    np.testing.assert_array_equal(got[0], a.numpy())
    np.testing.assert_array_equal(got[2], b.numpy())
    assert got[2].dtype == np.uint8
