"""CAA pieces on hand-made inputs: box masks, Sinkhorn affinity, propagation."""

from __future__ import annotations

import numpy as np
import torch

from clipseg_cli.cam.caa import affinity_from_attention, box_mask, refine_cams
from clipseg_cli.cam.normalize import minmax


def test_box_mask_uses_exclusive_ends_and_threshold() -> None:
    cam = np.zeros((6, 8), np.float32)
    cam[1:3, 2:5] = 1.0  # a 2x3 blob: box x=2..4, y=1..2 -> mask[1:3, 2:5]
    cam[4, 6] = 0.3  # below 0.4 * max: no box
    mask = box_mask(cam, 0.4)
    expected = np.zeros_like(cam)
    expected[1:3, 2:5] = 1
    np.testing.assert_array_equal(mask, expected)


def test_box_touching_the_border_never_covers_last_row_or_column() -> None:
    cam = np.ones((4, 5), np.float32)
    mask = box_mask(cam, 0.4)
    assert mask[:3, :4].all()
    assert not mask[3].any() and not mask[:, 4].any()


def test_box_mask_of_a_flat_zero_map_is_empty() -> None:
    assert not box_mask(np.zeros((3, 3), np.float32), 0.4).any()


def test_affinity_is_symmetric_and_nearly_doubly_stochastic() -> None:
    torch.manual_seed(0)
    attention = torch.stack([torch.rand(10, 10).softmax(dim=-1) for _ in range(8)]).mean(dim=0)
    r = affinity_from_attention(attention)
    assert r.shape == (9, 9)
    torch.testing.assert_close(r, r.T)
    # S is close to doubly stochastic after 3 Sinkhorn rounds, so is S @ S.
    torch.testing.assert_close(r.sum(dim=1), torch.ones(9), atol=1e-2, rtol=0)


def test_refine_only_propagates_from_inside_the_box() -> None:
    cams = np.zeros((1, 4, 4), np.float32)
    cams[0, 1, 1] = 1.0
    affinity = torch.eye(16)
    refined = refine_cams(affinity, cams, 0.4)
    # Identity affinity: the refined map is the masked CAM, min-max normalised.
    np.testing.assert_allclose(refined[0], minmax(cams[0] * box_mask(cams[0], 0.4)), atol=1e-6)
    assert refined[0, 1, 1] > 0.99 and refined[0].sum() < 1.01
