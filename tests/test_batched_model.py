"""The batched model stage: a batch of images (1 and 3 labels, one padded size) gives what one image
at a time gives; channel chunks, masked text sets and reduced precision behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipseg_cli.cam import gradcam
from clipseg_cli.cam.caa import box_mask
from clipseg_cli.cam.gradcam import AutogradSoftmaxGradCAM, FusedSoftmaxGradCAM, Targets, run_frozen_blocks
from clipseg_cli.cam.pipeline import CLIPESPredictor, CLIPESSettings, reduced_precision_blocks
from clipseg_cli.clip.loading import build_clip
from clipseg_cli.clip.model import LayerNorm
from clipseg_cli.data.classes import load_class_set
from tests.conftest import random_clip_state

LABELS = [[3], [14, 7, 11], [7], [2, 9, 4], [5]]  # VOC indices; image 2 repeats a label of image 1


@pytest.fixture(scope="module")
def model(one_torch_thread):  # noqa: ANN001, ANN201
    """A small CLIP whose attention is peaked like a trained one's (query/key weights scaled up):
    with the near-uniform attention of plain random weights, min-max normalisation of the
    almost flat refined maps turns float rounding into differences of 1e-3."""
    state = random_clip_state(seed=1, dtype=torch.float32, vision_width=128, vision_layers=4, embed_dim=48, text_width=48)
    for key, value in state.items():
        if key.startswith("visual.") and key.endswith("in_proj_weight"):
            value[: 2 * value.shape[1]] *= 3.0
    clip = build_clip(state)
    clip.logit_scale.fill_(2.3)  # a softer softmax than CLIP's 100x, so gradients are far from zero
    return clip


@pytest.fixture(scope="module")
def voc():  # noqa: ANN201
    return load_class_set("voc")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(len(LABELS), 3, 80, 112)  # one padded size: a 5 x 7 patch grid


@pytest.mark.parametrize("synonyms", ["sentence", "feature", "cam"])
def test_batch_equals_one_image_at_a_time(model, voc, images: torch.Tensor, synonyms: str) -> None:
    predictor = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam, synonyms=synonyms))  # type: ignore[arg-type]
    maps = predictor.grid_maps(images, LABELS)
    assert maps.counts == [1, 3, 1, 3, 1]
    assert maps.cams.shape == (9, 5, 7) and maps.refined.shape == (9, 5, 7)
    for b, (cams, refined) in enumerate(maps.per_image()):
        alone_cams, alone_refined = predictor.grid_cams(images[b : b + 1], LABELS[b])
        np.testing.assert_allclose(cams.numpy(), alone_cams, atol=1e-5, rtol=0)
        np.testing.assert_allclose(refined.numpy(), alone_refined, atol=1e-5, rtol=0)
        for cam, alone in zip(cams.numpy(), alone_cams):
            np.testing.assert_array_equal(box_mask(cam, voc.lam), box_mask(alone, voc.lam))
        assert np.isclose(alone_refined.max(axis=(1, 2)), 1.0, atol=1e-5).all()  # min-max normalised, not empty


def test_texts_shared_between_images_are_encoded_once(model, voc) -> None:
    predictor = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam))
    targets, fused = predictor.targets(LABELS)
    n_background = len(voc.background)
    distinct_labels = len({c for labels in LABELS for c in labels})  # 9: class 7 twice
    assert targets.texts.shape[0] == distinct_labels + n_background
    assert targets.member.sum(dim=1).tolist() == [len(labels) + n_background for labels in LABELS]
    assert targets.owner.tolist() == [0, 1, 1, 1, 2, 3, 3, 3, 4]
    assert targets.index[4] == targets.index[2]  # image 2's "7" is image 1's row
    assert fused is None
    features, rows = predictor.text_set([3, 14])  # one image: its labels' rows first, then the background
    assert rows == [[0], [1]] and features.shape[0] == 2 + n_background
    torch.testing.assert_close(features[0], targets.texts[targets.index[0]])
    # synonyms=cam: one channel per synonym, fused into its label
    cam_predictor = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam, synonyms="cam"))
    cam_targets, into = cam_predictor.targets([[3, 14]])
    sizes = [len(voc.synonyms[3]), len(voc.synonyms[14])]
    assert len(cam_targets) == sum(sizes)
    assert into is not None and into.tolist() == [0] * sizes[0] + [1] * sizes[1]
    _, cam_rows = cam_predictor.text_set([3, 14])
    assert cam_rows == [list(range(sizes[0])), list(range(sizes[0], sum(sizes)))]


def test_fused_batch_equals_autograd_image_by_image(model, voc, images: torch.Tensor) -> None:
    """Masked text sets in one batch (fused) against each image alone with only its own texts (autograd)."""
    predictor = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam))
    targets, _ = predictor.targets(LABELS)
    frozen = run_frozen_blocks(model.visual, images)
    acts, weights, attention = FusedSoftmaxGradCAM().channel_weights(model.visual, frozen, targets, model.logit_scale)
    start = 0
    for b, labels in enumerate(LABELS):
        mine = targets.member[b]
        texts = targets.texts[mine]  # this image's texts only, in the same order
        rows = torch.cumsum(mine.long(), 0) - 1
        channels = targets.index[start : start + len(labels)]
        alone = Targets.single(texts, rows[channels].tolist())
        single = run_frozen_blocks(model.visual, images[b : b + 1])
        a_ref, w_ref, att_ref = AutogradSoftmaxGradCAM().channel_weights(model.visual, single, alone, model.logit_scale)
        torch.testing.assert_close(acts[b], a_ref[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attention[b], att_ref[0], atol=1e-6, rtol=1e-5)
        ours = weights[start : start + len(labels)]
        scale = w_ref.abs().max()
        assert scale > 0
        torch.testing.assert_close(ours / scale, w_ref / scale, atol=2e-5, rtol=0)
        start += len(labels)


def test_all_channels_at_once_equal_one_channel_at_a_time(model, voc, images) -> None:
    """The GPU's vectorised attention backward against the CPU's channel loop (run here on the CPU)."""
    predictor = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam))
    targets, _ = predictor.targets(LABELS)
    frozen = run_frozen_blocks(model.visual, images)
    _, looped, _ = FusedSoftmaxGradCAM(per_channel=True).channel_weights(model.visual, frozen, targets, model.logit_scale)
    _, at_once, _ = FusedSoftmaxGradCAM(per_channel=False).channel_weights(model.visual, frozen, targets, model.logit_scale)
    scale = looped.abs().max()
    torch.testing.assert_close(at_once / scale, looped / scale, atol=1e-6, rtol=0)
    single = run_frozen_blocks(model.visual, images[1:2])
    alone = Targets.single(targets.texts, targets.index[1:4].tolist())
    alone.member = targets.member[1:2]
    _, one_looped, _ = FusedSoftmaxGradCAM(per_channel=True).channel_weights(model.visual, single, alone, model.logit_scale)
    _, one_at_once, _ = FusedSoftmaxGradCAM(per_channel=False).channel_weights(model.visual, single, alone, model.logit_scale)
    torch.testing.assert_close(one_at_once / scale, one_looped / scale, atol=1e-6, rtol=0)
    torch.testing.assert_close(one_looped / scale, looped[1:4] / scale, atol=1e-6, rtol=0)


def test_backward_in_channel_chunks_equals_one_chunk(model, voc, images, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam))
    targets, _ = predictor.targets(LABELS)
    frozen = run_frozen_blocks(model.visual, images)
    _, whole, _ = FusedSoftmaxGradCAM(per_channel=False).channel_weights(model.visual, frozen, targets, model.logit_scale)
    monkeypatch.setattr(gradcam, "BACKWARD_CHUNK_ELEMENTS", 1)  # one channel per chunk
    _, chunked, _ = FusedSoftmaxGradCAM(per_channel=False).channel_weights(model.visual, frozen, targets, model.logit_scale)
    scale = whole.abs().max()
    torch.testing.assert_close(chunked / scale, whole / scale, atol=1e-6, rtol=0)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_copies_the_frozen_blocks_only(model, voc, images, precision: str, dtype) -> None:
    blocks = reduced_precision_blocks(model.visual, precision)
    assert blocks is not None and len(blocks) == len(model.visual.blocks) - 1
    for block in blocks:
        for module in block.modules():
            for param in module.parameters(recurse=False):
                assert param.dtype == (torch.float32 if isinstance(module, LayerNorm) else dtype)
    assert all(p.dtype == torch.float32 for p in model.visual.parameters())  # the model is untouched
    assert reduced_precision_blocks(model.visual, "fp32") is None

    frozen = run_frozen_blocks(model.visual, images, blocks=blocks)
    reference = run_frozen_blocks(model.visual, images)
    assert frozen.tokens.dtype == dtype and frozen.attention_sum.dtype == torch.float32
    assert frozen.attention_count == reference.attention_count
    # Attention maps (rows sum to 1 per block) agree to the precision's few significant digits.
    assert (frozen.attention_sum - reference.attention_sum).abs().max() < 0.05 * frozen.attention_count
    low = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam, precision=precision))  # type: ignore[arg-type]
    full = CLIPESPredictor(model, voc, CLIPESSettings(lam=voc.lam))
    low_maps, full_maps = low.grid_maps(images, LABELS), full.grid_maps(images, LABELS)
    correlation = np.corrcoef(low_maps.cams.flatten().numpy(), full_maps.cams.flatten().numpy())[0, 1]
    assert correlation > 0.99
