"""WeakCLIP (Zhu et al., "WeakCLIP: Adapting CLIP for Weakly-supervised Semantic Segmentation",
section 3.3): a text-to-pixel decoder on a frozen CLIP, trained on CAM seeds with DSRG's losses,
that refines them into pseudo masks.

    images --frozen ViT--> f_1..f_4 (stages of blocks 1-3, 4-6, 7-9, 10-12), f_p = Proj(ln_post(f_4))
    prompts [SOT, ctx_1..ctx_N, class tokens, ., EOT] --frozen text tower--> t_p (1 + K, D)
    pyramid adapter:   f_1 -> 1/4, f_2 -> 1/8 (transposed convs), f_3 at 1/16, f_4 -> 1/32 (max-pool)
    co-attention:      t* = t_p + alpha * CrossAttn(t_p, f_p),  f* = f_p + beta * CrossAttn(f_p, t_p)
    matching:          lambda' = cos(t*, f*)  (1 + K maps at 1/16)
    text-guided decoder: [f'_i, lambda' resized to level i] -> Conv-BN-ReLU, coarse-to-fine -> logits at 1/4
    losses:            balanced seeding loss (eq. 12) + boundary loss (eq. 13, dense CRF on the CPU)

Only the context vectors, the adapter, the co-attention module and the decoder learn; CLIP's weights
get no gradient and are not saved in checkpoints. The matched classes are "background" plus the
class set's prompts, so the decoder's scores are (background, classes...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.clip.model import CLIP
from clipseg_cli.clip.tokenizer import tokenize
from clipseg_cli.errors import ConfigError
from clipseg_cli.methods import register
from clipseg_cli.methods.refiner import RefinerConfig, RefinerMethod, RefinerModel
from clipseg_cli.methods.weakclip_losses import balanced_seed_loss, boundary_loss, crf_targets, seeds_at
from clipseg_cli.training.config import setting

BACKGROUND_TEXT = "background"
N_STAGES = 4


def encode_prompt_embeddings(clip: CLIP, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower from token *embeddings* (N, L, width): features at each end-of-text token.

    Same computation as ``CLIP.encode_text`` (which starts from token ids); gradients flow to the
    embeddings, not to CLIP's frozen weights.
    """
    eot = tokens.argmax(dim=-1)
    length = int(eot.max()) + 1
    x = embeddings[:, :length] + clip.positional_embedding[:length].to(embeddings.dtype)
    x = clip.transformer(x, clip.causal_mask[:length, :length].to(x.dtype))
    x = clip.ln_final(x)
    return x[torch.arange(x.shape[0], device=x.device), eot] @ clip.text_projection


class PromptLearner(nn.Module):
    """CoOp's learnable context: N vectors in front of each class's tokens (eq. 5).

    The token embeddings of ``[SOT] X..X <class text>. [EOT]`` come from CLIP's frozen embedding
    table once; the N placeholders are replaced by the learnable ``ctx``.
    """

    def __init__(self, clip: CLIP, texts: Sequence[str], n_ctx: int) -> None:
        super().__init__()
        cfg = clip.config
        if n_ctx < 1:
            raise ConfigError(f"--context must be at least 1, got {n_ctx}")
        prompts = [" ".join(["X"] * n_ctx) + " " + text.strip() + "." for text in texts]
        probe = tokenize(prompts, 10 * cfg.context_length)
        too_long = [t for t, n in zip(texts, (probe != 0).sum(dim=1).tolist()) if n > cfg.context_length]
        if too_long:
            raise ConfigError(
                f"class prompt {too_long[0]!r} with --context {n_ctx} exceeds CLIP's {cfg.context_length} tokens; "
                "lower --context or shorten the class name"
            )
        tokens = tokenize(prompts, cfg.context_length)
        with torch.no_grad():
            embedded = clip.token_embedding(tokens.to(clip.token_embedding.weight.device)).float().cpu()
        self.ctx = nn.Parameter(torch.empty(n_ctx, cfg.text_width))
        nn.init.normal_(self.ctx, std=0.02)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("prefix", embedded[:, :1], persistent=False)
        self.register_buffer("suffix", embedded[:, 1 + n_ctx :], persistent=False)

    def forward(self) -> torch.Tensor:
        """(number of texts, context length, width) prompt embeddings."""
        ctx = self.ctx.unsqueeze(0).expand(self.prefix.shape[0], -1, -1)
        return torch.cat([self.prefix, ctx, self.suffix], dim=1)


class PyramidAdapter(nn.Module):
    """Fig. 3: the four stage outputs (all at 1/16) to 1/4, 1/8, 1/16 and 1/32.

    Each level first normalises its ViT feature map (GroupNorm with one group); then 1/4: two 2x2
    stride-2 transposed convolutions with BN + GELU between; 1/8: one; 1/16: identity; 1/32: 2x2 max-pool.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    nn.GroupNorm(1, width),
                    nn.ConvTranspose2d(width, width, 2, stride=2),
                    nn.BatchNorm2d(width),
                    nn.GELU(),
                    nn.ConvTranspose2d(width, width, 2, stride=2),
                ),
                nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, stride=2)),
                nn.GroupNorm(1, width),
                nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(2, ceil_mode=True)),
            ]
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [level(f) for level, f in zip(self.levels, feats)]


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``context`` tokens (pre-LayerNorm on both)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, nq, dim = query.shape
        q, kv = self.norm_q(query), self.norm_kv(context)

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, x.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(kv)), split(self.v(kv)))
        return self.out(out.transpose(1, 2).reshape(batch, nq, dim))


class CoAttentionMatching(nn.Module):
    """Eqs. 7-9: text attends to pixels and pixels to text, residuals scaled by learnable alpha and
    beta (one per channel, initialised to 0.1), then cosine similarity -> (B, T, h, w)."""

    def __init__(self, dim: int, heads: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.text_to_pixel = CrossAttention(dim, heads)
        self.pixel_to_text = CrossAttention(dim, heads)
        self.alpha = nn.Parameter(torch.full((dim,), init_scale))
        self.beta = nn.Parameter(torch.full((dim,), init_scale))

    def forward(self, text: torch.Tensor, pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``text`` (B, T, D), ``pixels`` (B, h*w, D) -> matched maps (B, T, h, w)."""
        text_star = text + self.alpha * self.text_to_pixel(text, pixels)
        pixels_star = pixels + self.beta * self.pixel_to_text(pixels, text)
        sim = F.normalize(text_star, dim=-1) @ F.normalize(pixels_star, dim=-1).transpose(1, 2)
        return sim.reshape(sim.shape[0], sim.shape[1], *grid)


def conv_bn_relu(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TextGuidedDecoder(nn.Module):
    """Fig. 5: at every level, [adapter features, matched maps resized to the level] -> 1x1 C.B.R.;
    coarse-to-fine (each level adds the upsampled coarser one) -> 3x3 C.B.R. per level; the levels,
    upsampled to 1/4, are summed -> 3x3 C.B.R. -> 1x1 convolution to the class scores."""

    def __init__(self, in_channels: int, n_match: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_relu(in_channels + n_match, dim, 1) for _ in range(N_STAGES))
        self.fuse = nn.ModuleList(conv_bn_relu(dim, dim, 3) for _ in range(N_STAGES))
        self.head = nn.Sequential(conv_bn_relu(dim, dim, 3), nn.Conv2d(dim, num_classes, 1))

    def forward(self, feats: Sequence[torch.Tensor], matched: torch.Tensor) -> torch.Tensor:
        def resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            if x.shape[-2:] == like.shape[-2:]:
                return x
            return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

        laterals = [lat(torch.cat([f, resize(matched, f)], dim=1)) for lat, f in zip(self.lateral, feats)]
        y = laterals[-1]
        outs = [self.fuse[-1](y)]
        for i in range(N_STAGES - 2, -1, -1):
            y = laterals[i] + resize(y, laterals[i])
            outs.insert(0, self.fuse[i](y))
        fused = outs[0]
        for o in outs[1:]:
            fused = fused + resize(o, outs[0])
        return self.head(fused)


def stage_ends(layers: int) -> list[int]:
    """Block counts after which the 4 stages end (3, 6, 9, 12 for ViT-B)."""
    if layers < N_STAGES:
        raise ConfigError(f"WeakCLIP needs a ViT with at least {N_STAGES} blocks, this CLIP has {layers}")
    return [layers * (s + 1) // N_STAGES for s in range(N_STAGES)]


class WeakCLIP(RefinerModel):
    """The WeakCLIP network on a frozen CLIP (registered as ``self.clip``, never trained nor saved)."""

    method: ClassVar[str] = "weakclip"
    crop_multiple: ClassVar[int] = 32

    def __init__(self, clip: CLIP, class_names: Sequence[str], texts: Sequence[str], context: int = 8, decoder_dim: int = 256) -> None:
        """``texts``: what is matched, background first then one per class (after the context vectors)."""
        super().__init__()
        if decoder_dim < 1:
            raise ConfigError(f"decoder_dim must be at least 1, got {decoder_dim}")
        if len(texts) != len(class_names) + 1:
            raise ConfigError(f"{len(texts)} prompt texts for {len(class_names)} classes + background")
        cfg = clip.config
        self.clip = clip.eval().requires_grad_(False)
        self.class_names = list(class_names)
        self.texts = list(texts)
        self.context = int(context)
        self.decoder_dim = int(decoder_dim)
        self.stage_ends = stage_ends(cfg.vision_layers)
        n_out = len(self.texts)
        self.prompt = PromptLearner(clip, self.texts, self.context)
        self.adapter = PyramidAdapter(cfg.vision_width)
        self.matching = CoAttentionMatching(cfg.embed_dim, max(1, cfg.embed_dim // 64))
        self.decoder = TextGuidedDecoder(cfg.vision_width, n_out, self.decoder_dim, n_out)
        self._text_cache: torch.Tensor | None = None

    # -- RefinerModel --
    @classmethod
    def create(cls, clip: CLIP, class_names: Sequence[str], class_prompts: Sequence[str], options: Mapping[str, Any]) -> WeakCLIP:
        texts = [BACKGROUND_TEXT, *class_prompts]
        return cls(clip, class_names, texts, int(options["context"]), int(options["decoder_dim"]))

    @classmethod
    def from_config(cls, clip: CLIP, model_config: Mapping[str, Any]) -> WeakCLIP:
        saved = dict(model_config["clip"])
        actual = asdict(clip.config)
        if saved != actual:
            diff = next(k for k in actual if saved.get(k) != actual[k])
            raise ConfigError(f"the checkpoint was trained on another CLIP architecture ({diff}: {saved.get(diff)} vs {actual[diff]})")
        return cls(
            clip,
            list(model_config["class_names"]),
            list(model_config["texts"]),
            int(model_config["context"]),
            int(model_config["decoder_dim"]),
        )

    def model_config(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "clip": asdict(self.clip.config),
            "class_names": self.class_names,
            "texts": self.texts,
            "context": self.context,
            "decoder_dim": self.decoder_dim,
            "num_classes": len(self.texts),
            "stage_ends": self.stage_ends,
            "normalization": self.normalization.to_dict(),
        }

    def train(self, mode: bool = True) -> WeakCLIP:
        self._text_cache = None
        return super().train(mode)  # type: ignore[return-value]

    # -- the network --
    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
        """Frozen ViT: the 4 stage outputs as (B, width, h, w) maps and f_p (B, h*w, D)."""
        visual = self.clip.visual
        x = visual.embed(images, round_pos_fp16=False)
        grid = (images.shape[-2] // visual.patch_size, images.shape[-1] // visual.patch_size)
        feats = []
        for i, block in enumerate(visual.blocks, 1):
            x, _ = block(x)
            if i in self.stage_ends:
                # contiguous: GroupNorm's CPU backward crashes on the transposed layout (torch 2.13)
                maps = x[:, 1:].float().transpose(1, 2).reshape(x.shape[0], -1, *grid)
                feats.append(maps.contiguous())
        f_p = (visual.ln_post(x[:, 1:]) @ visual.proj).float()
        return feats, f_p, grid

    def text_features(self) -> torch.Tensor:
        """t_p (1 + K, D) through the frozen text tower; cached while not training."""
        if not self.training and self._text_cache is not None:
            return self._text_cache
        with torch.set_grad_enabled(self.training and torch.is_grad_enabled()):
            t = encode_prompt_embeddings(self.clip, self.prompt(), self.prompt.tokens).float()
        if not self.training:
            self._text_cache = t = t.detach()
        return t

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, 1 + K, H'/4, W'/4) logits, H' and W' the size
        rounded up to a multiple of the patch size (the image is resized to it)."""
        patch = self.clip.visual.patch_size
        height, width = images.shape[-2:]
        size = (-(-height // patch) * patch, -(-width // patch) * patch)
        if size != (height, width):
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        feats, f_p, grid = self.image_features(images)
        pyramid = self.adapter(feats)
        text = self.text_features().unsqueeze(0).expand(images.shape[0], -1, -1)
        matched = self.matching(text, f_p, grid)
        return self.decoder(pyramid, matched)

    def training_loss(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 12 + eq. 13 at the logits' resolution (1/4 of the crop); seeds downsampled by nearest
        neighbour, the CRF of eq. 13 on the CPU over each image's classes."""
        log_probs = F.log_softmax(logits.float(), dim=1)
        seeds = seeds_at(batch["mask"], tuple(logits.shape[-2:]))
        labels = batch["labels"]
        seed = balanced_seed_loss(log_probs, seeds, labels)
        psi = crf_targets(log_probs.detach().exp().cpu().numpy(), batch["rgb"].numpy(), labels.numpy())
        boundary = boundary_loss(log_probs, torch.from_numpy(psi))
        return seed + boundary, {"seed_loss": float(seed.detach()), "boundary_loss": float(boundary.detach())}


@dataclass(kw_only=True)
class WeakClipConfig(RefinerConfig):
    context: int = setting(8, "Learnable context vectors before each class's tokens.", minimum=1)
    decoder_dim: int = setting(256, "Channels of the text-guided decoder.", minimum=1)


@register
class WeakClipRefiner(RefinerMethod):
    name = "weakclip"
    kind = "refiner.weakclip"
    summary = (
        "WeakCLIP: frozen CLIP, learnable prompt, pyramid adapter, co-attention matching, text-guided decoder, "
        "trained with the balanced seeding and boundary losses."
    )
    Config = WeakClipConfig
    Model = WeakCLIP
    smoke_args = {"tiny": "--crop 64 --batch-size 2 --context 4 --decoder-dim 16 --warmup-iters 0", "base": ""}
