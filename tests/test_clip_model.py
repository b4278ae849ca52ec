"""Our plain-torch CLIP: architecture read from shapes, checkpoint formats, numerics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from clipseg_cli.clip.loading import build_clip, config_from_state_dict, read_state_dict
from clipseg_cli.clip.model import MultiheadSelfAttention, interpolate_positional_embedding
from clipseg_cli.errors import WeightsError
from tests.conftest import random_clip_state


def test_golden_architecture_is_read_from_shapes(golden_weights: Path) -> None:
    cfg = config_from_state_dict(read_state_dict(golden_weights))
    assert (cfg.vision_width, cfg.vision_heads, cfg.vision_layers, cfg.vision_patch_size) == (128, 2, 12, 16)
    assert (cfg.text_width, cfg.text_heads, cfg.text_layers, cfg.embed_dim) == (64, 1, 2, 64)
    assert cfg.image_resolution == 224 and cfg.grid_size == 14


@pytest.mark.parametrize(
    "overrides",
    [
        {"vision_patch_size": 32, "vision_layers": 3},  # B/32-like
        {"vision_patch_size": 14, "vision_layers": 4, "vision_width": 128},  # L/14-like grid of 16x16
    ],
)
def test_other_vit_shapes_load(overrides: dict[str, int]) -> None:
    state = random_clip_state(seed=1, **overrides)
    model = build_clip(state)
    assert model.visual.patch_size == overrides["vision_patch_size"]
    image = torch.randn(1, 3, 2 * model.visual.patch_size, 3 * model.visual.patch_size)
    assert model.encode_image(image).shape == (1, 32)


def test_attention_matches_torch_multihead_attention() -> None:
    torch.manual_seed(0)
    ours = MultiheadSelfAttention(64, 4)
    torch.nn.init.normal_(ours.in_proj_bias)
    ref = nn.MultiheadAttention(64, 4)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(1, 10, 64)
    out, weights = ours(x, need_weights=True)
    ref_out, ref_weights = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), need_weights=True)
    torch.testing.assert_close(out, ref_out.transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)
    fused, none = ours(x)
    assert none is None
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-5)


def test_positional_embedding_interpolation_keeps_class_position_and_corners() -> None:
    table = torch.randn(1 + 14 * 14, 8)
    same = interpolate_positional_embedding(table, (14, 14), round_fp16=False)
    torch.testing.assert_close(same, table)
    bigger = interpolate_positional_embedding(table, (20, 30), round_fp16=False)
    assert bigger.shape == (1 + 600, 8)
    torch.testing.assert_close(bigger[0], table[0])
    rounded = interpolate_positional_embedding(table, (20, 30))
    torch.testing.assert_close(rounded, bigger.half().float())


def test_torchscript_archive_loads(tmp_path: Path) -> None:
    """OpenAI publishes ViT-B-16.pt as a TorchScript archive; its state dict carries extra entries."""
    state = random_clip_state(seed=3)

    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for key, value in state.items():
                owner: nn.Module = self
                *parents, leaf = key.split(".")
                for part in parents:
                    if not hasattr(owner, part):
                        owner.add_module(part, nn.Module())
                    owner = getattr(owner, part)
                owner.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
            self.register_buffer("input_resolution", torch.tensor(224))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(Holder()), str(path))
    loaded = read_state_dict(path)
    assert "input_resolution" not in loaded
    assert set(loaded) == set(state)
    torch.testing.assert_close(loaded["visual.proj"], state["visual.proj"])
    build_clip(loaded)


def test_wrapped_state_dict_with_module_prefix_loads(tmp_path: Path) -> None:
    state = random_clip_state(seed=4)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    assert set(read_state_dict(path)) == set(state)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read CLIP weights"),
        (b"not a checkpoint at all", "cannot read CLIP weights"),
    ],
)
def test_unreadable_files_raise_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        read_state_dict(path)
    assert "\n" not in str(info.value)


def test_non_clip_and_resnet_checkpoints_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="not a CLIP checkpoint"):
        config_from_state_dict(read_state_dict(path))
    with pytest.raises(WeightsError, match="ResNet CLIP"):
        config_from_state_dict({"visual.layer1.0.conv1.weight": torch.zeros(1)})


def test_pickled_code_is_not_executed(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint that would run code on load is refused."""

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(WeightsError):
        read_state_dict(path)


def test_text_tower_ignores_positions_after_the_end_of_text() -> None:
    """encode_text stops at the longest prompt; the causal mask makes that exact."""
    from clipseg_cli.clip.tokenizer import tokenize

    model = build_clip(random_clip_state(seed=5))
    tokens = tokenize(["a clean origami cat.", "a clean origami person with clothes, people, human."])
    ours = model.encode_text(tokens)
    x = model.token_embedding(tokens) + model.positional_embedding
    x = model.ln_final(model.transformer(x, model.causal_mask))
    full = x[torch.arange(2), tokens.argmax(dim=-1)] @ model.text_projection
    torch.testing.assert_close(ours, full, atol=1e-5, rtol=1e-5)
