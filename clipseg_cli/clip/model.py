"""CLIP with a ViT image tower, in plain torch, with OpenAI's parameter names.

Only what CLIP-ES needs beyond a standard CLIP is added: positional embeddings
interpolated to any patch grid, head-averaged attention maps on request, and a
split forward (frozen blocks without gradients, last block with gradients).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CLIPConfig:
    """Architecture of a ViT CLIP, as read from a checkpoint's tensor shapes."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int

    @property
    def vision_heads(self) -> int:
        return max(1, self.vision_width // 64)

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.vision_patch_size


# OpenAI's ViT-B/16 CLIP, for benchmarks that build random weights of the real size.
VIT_B_16_CONFIG = CLIPConfig(
    embed_dim=512,
    image_resolution=224,
    vision_layers=12,
    vision_width=768,
    vision_patch_size=16,
    context_length=77,
    vocab_size=49408,
    text_width=512,
    text_heads=8,
    text_layers=12,
)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as OpenAI's CLIP does)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadSelfAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameter names, batch-first.

    Returns the head-averaged attention probabilities when asked (computed head by
    head to bound memory); otherwise uses the fused kernel.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, tokens, width = x.shape
        head_dim = width // self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = (t.reshape(batch, tokens, self.heads, head_dim).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
        if need_weights:
            # One head at a time: never more than one (tokens x tokens) map per head in memory.
            # The softmax and the averaged maps are float32 whatever the weights' precision.
            outs, weights = [], torch.zeros(batch, tokens, tokens, dtype=torch.float32, device=x.device)
            for h in range(self.heads):
                scores = (q[:, h] * head_dim**-0.5) @ k[:, h].transpose(-2, -1)
                if mask is not None:
                    scores = scores + mask
                probs = scores.softmax(dim=-1, dtype=torch.float32)
                outs.append(probs.to(v.dtype) @ v[:, h])
                weights = weights + probs
            out = torch.stack(outs, dim=1)
            weights = weights / self.heads
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            weights = None
        out = out.transpose(1, 2).reshape(batch, tokens, width)
        return self.out_proj(out), weights


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = MultiheadSelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))])
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward_from_ln1(x, self.ln_1(x), mask, need_weights)

    def forward_from_ln1(
        self, x: torch.Tensor, a: torch.Tensor, mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block given its input ``x`` and ``a = ln_1(x)``: Grad-CAM differentiates w.r.t. ``a``."""
        attn_out, weights = self.attn(a, mask, need_weights)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, weights


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x, _ = block(x, mask)
        return x


def interpolate_positional_embedding(table: torch.Tensor, grid: tuple[int, int], round_fp16: bool = True) -> torch.Tensor:
    """Resize the patch part of a (1 + g*g, D) table to ``grid`` (bilinear, align_corners=False).

    ``round_fp16`` keeps the CLIP-ES reference's quirk of rounding the result to float16.
    """
    cls_pos, patch_pos = table[:1], table[1:]
    side = int(round(patch_pos.shape[0] ** 0.5))
    if side * side != patch_pos.shape[0]:
        raise ValueError("the positional embedding is not a square grid")
    width = table.shape[1]
    if tuple(grid) != (side, side):
        patch_pos = patch_pos.T.reshape(1, width, side, side)
        patch_pos = F.interpolate(patch_pos.float(), size=grid, mode="bilinear", align_corners=False)
        patch_pos = patch_pos.reshape(width, -1).T.to(table.dtype)
    out = torch.cat([cls_pos, patch_pos], dim=0)
    if round_fp16:
        out = out.half().to(table.dtype)
    return out


class VisionTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        width, patch = cfg.vision_width, cfg.vision_patch_size
        self.patch_size = patch
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def embed(self, image: torch.Tensor, round_pos_fp16: bool = True) -> torch.Tensor:
        """(B, 3, h, w) with h, w multiples of the patch size -> tokens (B, 1 + h'w', D) after ln_pre."""
        x = self.conv1(image.to(self.conv1.weight.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_positional_embedding(self.positional_embedding, grid, round_pos_fp16).to(x.dtype)
        return self.ln_pre(x)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP-ES's image embedding: ln_post, mean over patch tokens (not the class token), projection."""
        x = self.ln_post(x)
        return x[:, 1:, :].mean(dim=1) @ self.proj


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.ln_final = LayerNorm(cfg.text_width)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=cfg.text_width**-0.5)
        causal = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, context) token ids -> (N, embed_dim) features at the end-of-text token (not normalised)."""
        eot = tokens.argmax(dim=-1)
        # The mask is causal, so positions after the last end-of-text token change nothing: skip them.
        length = int(eot.max()) + 1 if tokens.numel() else tokens.shape[-1]
        tokens = tokens[:, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]
        x = self.transformer(x, self.causal_mask[:length, :length].to(x.dtype))
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """CLIP-ES's avg-token image embedding (not normalised), no attention kept."""
        x = self.visual.embed(image)
        x = self.visual.transformer(x)
        return self.visual.pool(x)
