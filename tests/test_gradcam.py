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


@pytest.mark.parametrize("impl", [AutogradSoftmaxGradCAM, FusedSoftmaxGradCAM])
def test_a_left_out_text_is_as_if_absent(model, impl) -> None:  # type: ignore[no-untyped-def]
    """Targets.exclude: channel k's softmax runs without the texts exclude[k], exactly as if they
    were not in the text set; the fused backward agrees with autograd's on it."""
    torch.manual_seed(2)
    image = torch.randn(1, 3, 48, 64)
    texts = torch.nn.functional.normalize(torch.randn(5, 48), dim=-1)
    frozen = run_frozen_blocks(model.visual, image)
    channels = Targets.single(texts, [0, 1, 3])
    channels.exclude = torch.tensor([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    left_out, _ = impl()(model.visual, frozen, channels, model.logit_scale)
    alone0, _ = impl()(model.visual, frozen, Targets.single(texts[[0, 2, 3, 4]], [0]), model.logit_scale)
    alone1, _ = impl()(model.visual, frozen, Targets.single(texts[[1, 2, 3, 4]], [0]), model.logit_scale)
    whole, _ = impl()(model.visual, frozen, Targets.single(texts, [3]), model.logit_scale)
    torch.testing.assert_close(left_out[0], alone0[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(left_out[1], alone1[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(left_out[2], whole[0], atol=1e-5, rtol=0)
    _, w, _ = FusedSoftmaxGradCAM().channel_weights(model.visual, frozen, channels, model.logit_scale)
    _, w_ref, _ = AutogradSoftmaxGradCAM().channel_weights(model.visual, frozen, channels, model.logit_scale)
    scale = w_ref.abs().max()
    torch.testing.assert_close(w / scale, w_ref / scale, atol=2e-5, rtol=0)


def test_synonyms_cam_gives_each_synonym_its_own_softmax(golden_weights) -> None:  # type: ignore[no-untyped-def]
    """--synonyms cam: the CAM of a class with synonyms (cat, kitten) is the max of the CAM of "cat"
    and that of "kitten", each from a softmax against the other labels and the background only, i.e.
    what --synonyms sentence gives with the prompt "cat", and with "kitten"; in one shared softmax
    the synonyms would compete, and the CAMs differ. Batched with another image, the same."""
    from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings
    from clipseg_cli.clip.loading import load_clip
    from clipseg_cli.data.classes import ClassSet

    clip = load_clip(golden_weights, "cpu")
    tensor = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(3))

    def predictor(prompts: tuple[str, str], synonyms: tuple[tuple[str, ...], ...], mode: str) -> CLIPESPredictor:
        classes = ClassSet("t", ("cat", "dog"), prompts, synonyms, ("sky", "wall"))
        return CLIPESPredictor(clip, classes, CLIPESSettings(synonyms=mode))  # type: ignore[arg-type]

    pair = predictor(("cat", "dog"), (("cat", "kitten"), ("dog",)), "cam")
    both = pair.grid_cams(tensor, [0, 1])[0]
    cat = predictor(("cat", "dog"), (("cat",), ("dog",)), "sentence").grid_cams(tensor, [0, 1])[0]
    kitten = predictor(("kitten", "dog"), (("kitten",), ("dog",)), "sentence").grid_cams(tensor, [0, 1])[0]
    np.testing.assert_allclose(both[0], np.maximum(cat[0], kitten[0]), atol=1e-5)
    assert not np.allclose(cat[0], kitten[0], atol=1e-2)  # the synonyms' CAMs differ, so the max is a real choice
    batched = pair.grid_maps(torch.cat([tensor, tensor.flip(-1)]), [[0, 1], [1, 0]]).cams.cpu().numpy()
    np.testing.assert_allclose(batched[:2], both, atol=1e-5)

    targets, _ = pair.targets([[0, 1]])
    targets.exclude = None  # one softmax over every text, synonyms included
    frozen = run_frozen_blocks(clip.visual, tensor)
    shared, _ = pair.gradcam(clip.visual, frozen, targets, clip.logit_scale)
    shared = shared.cpu().numpy()
    assert targets.index.tolist() == [0, 1, 2] and not np.allclose(np.maximum(shared[0], shared[1]), both[0], atol=1e-3)
