"""WeakCLIP's network and losses (issue 7): shapes, where gradients go, eq. 12 / 13 / 14, schedule."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_cli.clip.loading import load_clip
from clipseg_cli.errors import ConfigError
from clipseg_cli.inference import keep_image_labels, predict_folder
from clipseg_cli.methods.refiner import CLIP_NORM, RefineDataset
from clipseg_cli.methods.weakclip import WeakCLIP, encode_prompt_embeddings, stage_ends
from clipseg_cli.methods.weakclip_losses import balanced_seed_loss, boundary_loss, crf_targets, seeds_at
from clipseg_cli.segmentation.dataset import find_pairs
from clipseg_cli.segmentation.synthetic import write_shapes_dataset
from clipseg_cli.training.schedules import warmup_cosine_lr as scheduled_lr

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["cat", "dog", "person"]


@pytest.fixture(scope="module")
def clip(golden_weights: Path):  # type: ignore[no-untyped-def]
    return load_clip(golden_weights)


def make_model(clip, seed: int = 0, **options: int) -> WeakCLIP:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    opts = {"context": 4, "decoder_dim": 16, **options}
    return WeakCLIP.create(clip, CLASSES, ["cat", "dog", "person with clothes"], opts)


def clip_hash(model: WeakCLIP) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.clip.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_shapes(clip) -> None:  # type: ignore[no-untyped-def]
    model = make_model(clip)
    cfg = clip.config
    assert model.stage_ends == [3, 6, 9, 12] == stage_ends(12)
    assert model.texts == ["background", "cat", "dog", "person with clothes"]
    x = torch.randn(2, 3, 64, 96)
    feats, f_p, grid = model.image_features(x)
    assert grid == (4, 6)
    assert [tuple(f.shape) for f in feats] == [(2, cfg.vision_width, 4, 6)] * 4
    assert f_p.shape == (2, 24, cfg.embed_dim)
    pyramid = model.adapter(feats)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(16, 24), (8, 12), (4, 6), (2, 3)]  # 1/4, 1/8, 1/16, 1/32
    assert all(p.shape[1] == cfg.vision_width for p in pyramid)
    prompts = model.prompt()
    assert prompts.shape == (4, cfg.context_length, cfg.text_width)
    assert torch.equal(prompts[:, 1:5], model.prompt.ctx.expand(4, -1, -1))  # [SOT, ctx x 4, class ...]
    text = model.text_features()
    assert text.shape == (4, cfg.embed_dim)
    matched = model.matching(text.expand(2, -1, -1), f_p, grid)
    assert matched.shape == (2, 4, 4, 6)
    assert matched.abs().max() <= 1 + 1e-5  # cosine
    assert model(x).shape == (2, 4, 16, 24)
    model.eval()
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 4, 16, 20)  # resized up to 64 x 80


def test_prompt_encoder_matches_clip_text_tower(clip) -> None:  # type: ignore[no-untyped-def]
    """With the context vectors set to CLIP's own embedding of "X", the prompt is plain text."""
    model = make_model(clip)
    with torch.no_grad():
        model.prompt.ctx.copy_(clip.token_embedding.weight[343].expand_as(model.prompt.ctx))
        ours = encode_prompt_embeddings(clip, model.prompt(), model.prompt.tokens)
        reference = clip.encode_text(model.prompt.tokens)
    torch.testing.assert_close(ours, reference)


def test_co_attention_scales_start_at_a_tenth(clip) -> None:  # type: ignore[no-untyped-def]
    model = make_model(clip)
    assert torch.equal(model.matching.alpha, torch.full_like(model.matching.alpha, 0.1))
    assert torch.equal(model.matching.beta, torch.full_like(model.matching.beta, 0.1))


def test_co_attention_wiring_eqs_7_to_9_by_hand() -> None:
    """t* = t + alpha CrossAttn(q = t, k = v = f), f* = f + beta CrossAttn(q = f, k = v = t), cos(t*, f*):
    computed here with explicit LayerNorm, projections, per-head softmax(QK^T / sqrt(d)) V. Text
    attending to itself (or pixels to themselves) gives other numbers."""
    from clipseg_cli.methods.weakclip import CoAttentionMatching

    torch.manual_seed(0)
    dim, heads, grid = 8, 2, (2, 3)
    module = CoAttentionMatching(dim, heads)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))  # LayerNorm affine, biases, alpha and beta away from their start
    text, pixels = torch.randn(2, 3, dim), torch.randn(2, 6, dim)

    def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    def attend(att, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        q = layer_norm(query, att.norm_q) @ att.q.weight.T + att.q.bias
        k = layer_norm(context, att.norm_kv) @ att.k.weight.T + att.k.bias
        v = layer_norm(context, att.norm_kv) @ att.v.weight.T + att.v.bias
        d = dim // heads
        outs = []
        for h in range(heads):
            qh, kh, vh = q[..., h * d : (h + 1) * d], k[..., h * d : (h + 1) * d], v[..., h * d : (h + 1) * d]
            weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
            outs.append(weights @ vh)
        return torch.cat(outs, dim=-1) @ att.out.weight.T + att.out.bias

    with torch.no_grad():
        t_star = text + module.alpha * attend(module.text_to_pixel, text, pixels)
        f_star = pixels + module.beta * attend(module.pixel_to_text, pixels, text)
        want = F.normalize(t_star, dim=-1) @ F.normalize(f_star, dim=-1).transpose(1, 2)
        got = module(text, pixels, grid)
        assert got.shape == (2, 3, 2, 3)
        torch.testing.assert_close(got, want.reshape(2, 3, *grid), atol=1e-5, rtol=1e-5)
        self_text = text + module.alpha * attend(module.text_to_pixel, text, text)
        wrong = F.normalize(self_text, dim=-1) @ F.normalize(f_star, dim=-1).transpose(1, 2)
        assert (wrong - want).abs().max() > 1e-2  # the test tells the two wirings apart


def test_gradients_reach_only_the_learnable_parts(clip) -> None:  # type: ignore[no-untyped-def]
    model = make_model(clip)
    before = clip_hash(model)
    learnable = model.learnable_parameters()
    names = {n for n, p in model.named_parameters() if any(p is q for q in learnable)}
    assert names and not any(n.startswith("clip.") for n in names)
    assert {n.split(".")[0] for n in names} == {"prompt", "adapter", "matching", "decoder"}
    assert all(not p.requires_grad for p in clip.parameters())
    optimizer = torch.optim.AdamW(learnable, lr=1e-2)
    model.train()
    rng = np.random.default_rng(0)
    batch = {
        "mask": torch.from_numpy(rng.choice([0, 1, 3, 255], (2, 64, 64))),
        "labels": torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.bool),
        "rgb": torch.from_numpy(rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)),
    }
    for _ in range(2):
        logits = model(torch.randn(2, 3, 64, 64))
        loss, parts = model.training_loss(logits, batch)
        assert set(parts) == {"seed_loss", "boundary_loss"}
        optimizer.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            if n.startswith("clip."):
                assert p.grad is None, n
            else:
                assert p.grad is not None and p.grad.abs().sum() > 0, n
        optimizer.step()
    assert clip_hash(model) == before
    saved = model.learnable_state_dict()
    assert saved and not any(k.startswith("clip.") for k in saved)
    assert "prompt.ctx" in saved and "matching.alpha" in saved
    assert not any(k.startswith("prompt.prefix") or k.startswith("prompt.tokens") for k in saved)
    assert not model.clip.training  # model.train() leaves the frozen CLIP in eval mode

    other = make_model(clip, seed=1)
    other.load_learnable_state_dict(saved)
    model.eval(), other.eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), other(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="missing"):
        other.load_learnable_state_dict({k: v for k, v in saved.items() if k != "prompt.ctx"})


def test_text_features_are_cached_only_in_eval(clip) -> None:  # type: ignore[no-untyped-def]
    model = make_model(clip).eval()
    first = model.text_features()
    assert model.text_features() is first
    model.train()
    assert model.text_features().requires_grad


def test_context_too_long_is_a_config_error(clip) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="--context"):
        make_model(clip, context=80)


def test_balanced_seed_loss_eq12() -> None:
    logits = torch.randn(2, 4, 3, 3)
    log_probs = F.log_softmax(logits, dim=1)
    seeds = torch.tensor(
        [[[0, 0, 1], [1, 255, 2], [3, 3, 3]],  # image 0: labels bg, 1, 3 -> class 2 is not labelled: not counted
         [[0, 0, 0], [0, 0, 0], [255, 255, 255]]]  # image 1: no foreground seed
    )  # fmt: skip
    labels = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0]], dtype=torch.bool)
    lp = log_probs
    fg0 = -(lp[0, 1, 0, 2] + lp[0, 1, 1, 0] + lp[0, 3, 2].sum()) / 5
    bg0 = -(lp[0, 0, 0, 0] + lp[0, 0, 0, 1]) / 2
    bg1 = -lp[1, 0, :2].sum() / 6
    expected = (fg0 + 0.0) / 2 + (bg0 + bg1) / 2
    torch.testing.assert_close(balanced_seed_loss(log_probs, seeds, labels), expected)
    # foreground and background weigh the same whatever their areas
    big_bg = torch.zeros(1, 8, 8, dtype=torch.long)
    big_bg[0, 0, 0] = 1
    uniform = torch.full((1, 2, 8, 8), math.log(0.5))
    torch.testing.assert_close(balanced_seed_loss(uniform, big_bg, torch.ones(1, 2, dtype=torch.bool)), torch.tensor(2 * math.log(2)))


def test_boundary_loss_eq13_and_crf_targets() -> None:
    rng = np.random.default_rng(0)
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    log_probs = F.log_softmax(logits, dim=1)
    labels = np.array([[1, 1, 0, 1], [1, 0, 1, 0]], bool)
    rgb = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    psi = crf_targets(log_probs.detach().exp().numpy(), rgb, labels)
    assert psi.shape == (2, 4, 8, 8)
    np.testing.assert_allclose(psi.sum(axis=1), 1.0, rtol=1e-5)
    assert (psi[0, 2] == 0).all() and (psi[1, 1] == 0).all() and (psi[1, 3] == 0).all()
    assert psi[labels].min() >= 1e-4 / 1.01
    psi_t = torch.from_numpy(psi)
    loss = boundary_loss(log_probs, psi_t)
    expected = (psi_t * (torch.log(psi_t.clamp(min=1e-30)) - log_probs)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # KL(P || P) = 0
    torch.testing.assert_close(boundary_loss(log_probs.detach(), log_probs.detach().exp()), torch.tensor(0.0), atol=1e-6, rtol=0)


def test_seeds_at_nearest() -> None:
    seeds = torch.arange(16).reshape(1, 4, 4)
    assert torch.equal(seeds_at(seeds, (2, 2)), torch.tensor([[[0, 2], [8, 10]]]))
    assert seeds_at(seeds, (4, 4)) is not None


def test_eq14_keep_image_labels() -> None:
    mask = np.array([[0, 1, 2], [3, 255, 2]], np.uint8)
    out = keep_image_labels(mask, [2])
    assert out.tolist() == [[0, 255, 2], [255, 255, 2]]
    assert keep_image_labels(mask, []).tolist() == [[0, 255, 255], [255, 255, 255]]
    assert mask.tolist() == [[0, 1, 2], [3, 255, 2]]  # input untouched


def test_predict_folder_applies_eq14_and_skips_unlabelled(tmp_path: Path) -> None:
    data = write_shapes_dataset(tmp_path / "d", 3, size=16, num_classes=3, seed=0)

    class Thirds:
        class_names = CLASSES

        def probabilities(self, image: np.ndarray, labels=None) -> np.ndarray:  # noqa: ANN001
            h, w = image.shape[:2]
            probs = np.zeros((4, h, w), np.float32)
            for c in range(4):
                probs[c, :, c * w // 4 : (c + 1) * w // 4] = 1
            return probs

        def image_labels(self, key: str) -> list[int] | None:
            return {"s000": [1, 3], "s001": [2]}.get(key)

    summary = predict_folder(data / "images", tmp_path / "out", Thirds(), crf=False, overwrite=False, settings={})
    assert summary.written == 2 and summary.unlabelled == ["s002"]
    from PIL import Image

    m0 = np.asarray(Image.open(tmp_path / "out" / "masks" / "s000.png"))
    assert sorted(np.unique(m0).tolist()) == [0, 1, 3, 255]
    assert (m0[:, 8:12] == 255).all()  # class 2 is not a label of s000
    m1 = np.asarray(Image.open(tmp_path / "out" / "masks" / "s001.png"))
    assert sorted(np.unique(m1).tolist()) == [0, 2, 255]
    assert not (tmp_path / "out" / "masks" / "s002.png").exists()


def test_refine_dataset_items(tmp_path: Path) -> None:
    data = write_shapes_dataset(tmp_path / "d", 2, size=40, num_classes=3, seed=0)
    pairs = find_pairs(data / "images", data / "masks")
    ds = RefineDataset(pairs, [[1], [2, 3]], 4, CLIP_NORM, (1.0,), 32, seed=0)
    item = ds[(1, 7)]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (32, 32)
    assert item["rgb"].shape == (32, 32, 3) and item["rgb"].dtype == torch.uint8
    assert item["labels"].tolist() == [True, False, True, True]
    again = ds[(1, 7)]
    assert torch.equal(item["rgb"], again["rgb"]) and torch.equal(item["image"], again["image"])


def test_schedule_warmup_then_cosine() -> None:
    assert scheduled_lr(1e-4, 0, 1000, 0.1) == pytest.approx(1e-4 * 1e-6, rel=1e-3)
    assert scheduled_lr(1e-4, 50, 1000, 0.1) < scheduled_lr(1e-4, 99, 1000, 0.1) < 1e-4
    assert scheduled_lr(1e-4, 0, 1000, 0.0) == pytest.approx(1e-4)
    assert scheduled_lr(1e-4, 500, 1000, 0.0) == pytest.approx(0.5 * (1e-4 + 1e-6))
    assert scheduled_lr(1e-4, 1000, 1000, 0.1) == pytest.approx(1e-6)
