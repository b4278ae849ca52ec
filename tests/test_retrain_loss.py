"""Confidence-guided loss, balanced CE weights, poly schedule, optimizer groups, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_cli.methods.deeplab import build_optimizer
from clipseg_cli.segmentation.augment import train_augment
from clipseg_cli.segmentation.deeplab import build_deeplabv2
from clipseg_cli.segmentation.losses import balanced_ce, balanced_class_weights, confidence_guided_ce
from clipseg_cli.training.schedules import poly_lr, set_lr


@pytest.mark.parametrize("loss_fn", [confidence_guided_ce, balanced_ce])
def test_pixels_labelled_255_get_exactly_zero_gradient(loss_fn) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 16, 16, requires_grad=True)
    target = torch.randint(0, 4, (2, 16, 16))
    target[0, :5] = 255
    target[1, :, 10:] = 255
    loss_fn(logits, target).backward()
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    assert torch.count_nonzero(logits.grad[ignored]) == 0
    assert torch.count_nonzero(logits.grad[~ignored]) > 0


@pytest.mark.parametrize("loss_fn", [confidence_guided_ce, balanced_ce])
def test_loss_with_255_equals_loss_over_labelled_pixels_only(loss_fn) -> None:  # type: ignore[no-untyped-def]
    """Gradients with a 255 region equal those of a loss that never sees those pixels."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (1, 64, 64))
    target[0, 20:30, 20:30] = 255
    loss_fn(logits, target).backward()
    g1 = logits.grad.clone()
    logits.grad = None
    other = target.clone()
    other[0, 20:30, 20:30] = 1  # any class: these pixels are masked out of the reference below
    mask = torch.ones_like(other, dtype=torch.bool)
    mask[0, 20:30, 20:30] = False
    # Reference: plain CE over the valid pixels only, computed by hand.
    up = F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False)
    if loss_fn is confidence_guided_ce:
        ref = F.cross_entropy(up, other, reduction="none")[mask].mean()
    else:
        ce = F.cross_entropy(up, other, reduction="none")[mask]
        labels = other[mask]
        ref = torch.stack([ce[labels == c].mean() for c in labels.unique()]).mean()
    ref.backward()
    torch.testing.assert_close(g1, logits.grad)


def test_ce_ignores_255_and_all_ignored_gives_zero() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = confidence_guided_ce(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_balanced_weights() -> None:
    target = torch.tensor([[0] * 6 + [1] * 3 + [3] * 1 + [255] * 5])
    w = balanced_class_weights(target, 5)
    # n = 10 labelled pixels, K = 3 classes present: w_c = 10 / (3 * n_c).
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 0.0, 10 / 3, 0.0]))
    # Weighted mean = mean of per-class mean losses.
    logits = torch.randn(1, 5, 1, 15)
    t = target.view(1, 1, 15)
    ce = F.cross_entropy(logits, t, ignore_index=255, reduction="none")[0, 0]
    per_class = [ce[:6].mean(), ce[6:9].mean(), ce[9:10].mean()]
    torch.testing.assert_close(balanced_ce(logits, t), torch.stack(per_class).mean())


def test_poly_schedule_values() -> None:
    assert poly_lr(2e-4, 0, 20000, 0.9) == pytest.approx(2e-4)
    assert poly_lr(2e-4, 10000, 20000, 0.9) == pytest.approx(2e-4 * 0.5**0.9)
    assert poly_lr(2e-4, 19999, 20000, 0.9) == pytest.approx(2e-4 * (1 / 20000) ** 0.9)
    assert poly_lr(2e-4, 20000, 20000, 0.9) == 0.0
    assert poly_lr(1.0, 5, 10, 1.0) == pytest.approx(0.5)


def test_optimizer_groups_follow_deeplab() -> None:
    model = build_deeplabv2("deeplabv2-resnet18", 3)
    opt = build_optimizer(model, 1e-3)
    groups = {g["name"]: g for g in opt.param_groups}
    assert opt.defaults["momentum"] == 0.9
    assert groups["backbone"]["weight_decay"] == 5e-4 and groups["backbone"]["lr"] == pytest.approx(1e-3)
    assert groups["head.weight"]["lr"] == pytest.approx(1e-2) and groups["head.weight"]["weight_decay"] == 5e-4
    assert groups["head.bias"]["lr"] == pytest.approx(2e-2) and groups["head.bias"]["weight_decay"] == 0.0
    assert "backbone.bn" in groups  # random init: BN is trained
    set_lr(opt, 5e-4)
    assert groups["head.weight"]["lr"] == pytest.approx(5e-3)
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == n_params
    model.freeze_bn()
    names = {g["name"] for g in build_optimizer(model, 1e-3).param_groups}
    assert "backbone.bn" not in names


def test_augment_pads_with_mean_and_255_and_is_reproducible() -> None:
    image = np.full((10, 12, 3), 7, np.uint8)
    mask = np.ones((10, 12), np.uint8)
    fill = np.array([1.0, 2.0, 3.0], np.float32)
    a = train_augment(image, mask, np.random.default_rng([0, 1]), (1.0,), 32, fill)
    b = train_augment(image, mask, np.random.default_rng([0, 1]), (1.0,), 32, fill)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    img, m = a
    assert img.shape == (32, 32, 3) and m.shape == (32, 32)
    assert (m == 1).sum() == 120 and set(np.unique(m)) == {1, 255}
    assert np.all(img[m == 255] == fill)
    big = np.zeros((40, 40, 3), np.uint8)
    img, m = train_augment(big, np.zeros((40, 40), np.uint8), np.random.default_rng(3), (0.5, 2.0), 16, fill)
    assert img.shape == (16, 16, 3)
