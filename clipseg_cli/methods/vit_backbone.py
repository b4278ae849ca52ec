"""Shared ViT backbone of the learned CAM generators (DALNet, ViT-PCM), in plain torch.

API (small and stable; both backbones share it):

- :func:`build_backbone` ``(spec, clip_weights, device, load_clip=None)``: ``spec="clip"`` is the image tower of our
  CLIP (``clipseg_cli.clip.model.VisionTransformer``, weights resolved like the main command);
  any other ``spec`` is a FILE holding an ImageNet ViT state dict in timm's layout, loaded into
  :class:`TimmViT` (GELU, biased patch embedding, no ln_pre, LayerNorm eps 1e-6).
- :func:`tiny_vit` : a random-init :class:`TimmViT` with few layers, for tests.
- :func:`forward_tokens` ``(vit, image, layers=())``: ``(cls (B,D), patches (B,N,D), grid, {i: tokens})``
  after the final norm; ``layers`` asks for the raw (un-normed) output tokens ``(B,1+N,D)`` of blocks ``i``.
- :func:`patch_tokens` ``(vit, image)``: ``(patches (B,N,D), grid)``.

Both backbone classes expose ``patch_size``, ``width``, ``embed(image)`` (class + patch tokens with
positional embeddings interpolated to the image's patch grid), ``blocks`` (each block maps
``x -> (x, attention or None)``) and ``ln_post`` (the final norm). Images must be multiples of
``patch_size`` on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.clip.model import interpolate_positional_embedding
from clipseg_cli.errors import ConfigError
from clipseg_cli.methods.base import weights_setting
from clipseg_cli.training.config import RunConfig, setting


@dataclass(kw_only=True)
class ViTConfig(RunConfig):
    """The settings of a method on a ViT backbone built by :func:`build_backbone`."""

    backbone: str = setting("clip", "clip: our CLIP's image tower; FILE: a timm-layout ImageNet ViT state dict.",
                            metavar="clip|FILE")  # fmt: skip
    weights: Path | None = weights_setting(
        "CLIP checkpoint for --backbone clip (default: $WSSS_LABEL_WEIGHTS, else the cached ViT-B-16.pt)."
    )


__all__ = ["TimmViT", "ViTConfig", "build_backbone", "tiny_vit", "forward_tokens", "patch_tokens", "vit_width"]


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if need_weights:
            probs = ((q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
            out, weights = probs @ v, probs.mean(dim=1)
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v), None
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), weights


class _Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = _Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.norm1(x), need_weights)
        x = x + a
        return x + self.mlp(self.norm2(x)), weights


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=True)


class TimmViT(nn.Module):
    """A ViT with timm's ``vit_base_patch16_224`` parameter names (classifier head dropped)."""

    def __init__(self, width: int = 768, depth: int = 12, heads: int = 12, patch_size: int = 16, grid: int = 14) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, width))
        self.blocks = nn.ModuleList([_Block(width, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def width(self) -> int:
        return self.cls_token.shape[-1]

    @property
    def ln_post(self) -> nn.LayerNorm:
        return self.norm

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(image.to(self.cls_token.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + interpolate_positional_embedding(self.pos_embed[0], grid, round_fp16=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], heads: int | None = None) -> "TimmViT":
        """Build from a timm-layout state dict (``model.``/``module.`` prefixes and ``head.*`` ignored).

        Shapes give width, depth, patch size and grid; the head count does not: ``heads`` defaults
        to ``width // 64`` (64-d heads, as timm's ViT-Ti/S/B/L)."""
        state = {k.removeprefix("module.").removeprefix("model."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_drop."))}
        try:
            proj = state["patch_embed.proj.weight"]
            pos = state["pos_embed"]
        except KeyError as err:
            raise ValueError(f"not a timm ViT state dict: missing {err.args[0]}") from None
        width, patch = proj.shape[0], proj.shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        grid = int(round((pos.shape[1] - 1) ** 0.5))
        model = cls(width=width, depth=depth, heads=heads or max(1, width // 64), patch_size=patch, grid=grid)
        model.load_state_dict(state, strict=True)
        return model


def _clip_width(vit: nn.Module) -> int:
    return vit.class_embedding.shape[-1]


def vit_width(vit: nn.Module) -> int:
    """Token width D of either backbone."""
    return vit.width if isinstance(vit, TimmViT) else _clip_width(vit)


def build_backbone(
    spec: str,
    clip_weights: Path | None,
    device: torch.device,
    load_clip: Callable[[Path | None, torch.device], tuple[Any, Any]] | None = None,
) -> nn.Module:
    """``"clip"``: our CLIP's image tower (float32, trainable), loaded by ``load_clip(weights, device)
    -> (CLIP, resolved weights)`` (default: resolved as for labelling, no progress display);
    otherwise a timm ViT state-dict FILE. ConfigError (one line) when it cannot be used."""
    if spec == "clip":
        if load_clip is None:
            from clipseg_cli.methods.base import load_clip_resolved as load_clip
        model, _ = load_clip(clip_weights, device)
        vit = model.visual.float()
    else:
        if not Path(spec).is_file():
            raise ConfigError(f"--backbone {spec}: neither 'clip' nor a file")
        vit = _load_timm_vit(Path(spec))
    vit = vit.to(device)
    vit.requires_grad_(True)
    return vit


def _load_timm_vit(path: Path) -> TimmViT:
    """A timm ViT from a state-dict FILE; ConfigError (one line) if it is not one."""
    from clipseg_cli.errors import ConfigError
    from clipseg_cli.io.torch_files import load_torch_file

    state = load_torch_file(path, "--backbone")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"--backbone {path}: not a state dict of tensors (a timm ViT's)")
    try:
        return TimmViT.from_state_dict(state)
    except ValueError as exc:  # from_state_dict's own "not a timm ViT state dict: ..."
        raise ConfigError(f"--backbone {path}: {exc}") from None
    except (RuntimeError, KeyError, IndexError) as exc:  # load_state_dict: keys or shapes do not fit
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        detail = next((line for line in lines if line.startswith(("size mismatch", "Missing", "Unexpected"))), lines[0])
        raise ConfigError(f"--backbone {path}: not a timm ViT state dict ({detail[:160]})") from None


def tiny_vit(width: int = 48, depth: int = 4, heads: int = 3, patch_size: int = 4, grid: int = 8, seed: int = 0) -> TimmViT:
    """A random-init small :class:`TimmViT` for tests (deterministic for a given ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TimmViT(width=width, depth=depth, heads=heads, patch_size=patch_size, grid=grid)


def forward_tokens(
    vit: nn.Module, image: torch.Tensor, layers: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], dict[int, torch.Tensor]]:
    """Run ``vit`` on ``image`` (B,3,H,W): final-normed class token (B,D), patch tokens (B,N,D),
    the patch grid ``(H/p, W/p)`` and the raw outputs ``(B,1+N,D)`` of the blocks listed in ``layers``
    (0-based; negative counts from the end)."""
    p = vit.patch_size
    grid = (image.shape[-2] // p, image.shape[-1] // p)
    depth = len(vit.blocks)
    wanted = {i % depth for i in layers}
    x = vit.embed(image)
    kept: dict[int, torch.Tensor] = {}
    for i, block in enumerate(vit.blocks):
        x, _ = block(x)
        if i in wanted:
            kept[i] = x
    out = {i: kept[i % depth] for i in layers}
    x = vit.ln_post(x)
    return x[:, 0], x[:, 1:], grid, out


def patch_tokens(vit: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Final-normed patch tokens (B, N, D) and the grid (h, w), N = h*w, row-major."""
    _, patches, grid, _ = forward_tokens(vit, image)
    return patches, grid
