"""The fused Grad-CAM (hand-written batched backward) equals autograd's, on weights other than the golden ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipseg_cli.cam.gradcam import AutogradSoftmaxGradCAM, FusedSoftmaxGradCAM, Targets, run_frozen_blocks
from clipseg_cli.clip.loading import build_clip
from tests.conftest import random_clip_state


@pytest.fixture(scope="module")
def model():
    clip = build_clip(random_clip_state(seed=11, vision_width=192, vision_layers=6, embed_dim=48, text_width=48))
    clip.logit_scale.fill_(2.3)  # a softer softmax than CLIP's 100x, so gradients are far from zero
    return clip


@pytest.mark.parametrize("size, targets", [((48, 80), [0]), ((64, 32), [2, 0, 5]), ((32, 48), [1, 3, 4, 0])])
def test_fused_channel_weights_equal_autograd(model, size: tuple[int, int], targets: list[int]) -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 3, *size)
    texts = torch.nn.functional.normalize(torch.randn(9, 48), dim=-1)
    frozen = run_frozen_blocks(model.visual, image)
    channels = Targets.single(texts, targets)
    a_ref, w_ref, att_ref = AutogradSoftmaxGradCAM().channel_weights(model.visual, frozen, channels, model.logit_scale)
    a, w, att = FusedSoftmaxGradCAM().channel_weights(model.visual, frozen, channels, model.logit_scale)
    torch.testing.assert_close(a, a_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(att, att_ref, atol=1e-6, rtol=1e-5)
    scale = w_ref.abs().max()
    assert scale > 0
    torch.testing.assert_close(w / scale, w_ref / scale, atol=2e-5, rtol=0)


def test_fused_cams_equal_autograd_cams(model) -> None:
    torch.manual_seed(1)
    image = torch.randn(1, 3, 80, 96)
    texts = torch.nn.functional.normalize(torch.randn(6, 48), dim=-1)
    frozen = run_frozen_blocks(model.visual, image)
    channels = Targets.single(texts, [0, 1])
    ref, _ = AutogradSoftmaxGradCAM()(model.visual, frozen, channels, model.logit_scale)
    ours, _ = FusedSoftmaxGradCAM()(model.visual, frozen, channels, model.logit_scale)
    assert ours.shape == (2, 5, 6)
    ref, ours = ref.numpy(), ours.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    peaks = ours.max(axis=(1, 2))
    assert (np.isclose(peaks, 1.0, atol=1e-5) | (peaks == 0)).all() and peaks.max() > 0.99  # min-max normalised


def test_frozen_pass_sums_the_last_blocks_attention(model) -> None:
    image = torch.randn(1, 3, 32, 32)
    frozen = run_frozen_blocks(model.visual, image, keep=3)
    assert frozen.attention_count == 2  # blocks 4 and 5 of 6; the last block is the Grad-CAM pass
    rows = frozen.attention_sum.sum(dim=-1)
    torch.testing.assert_close(rows, torch.full_like(rows, 2.0))
