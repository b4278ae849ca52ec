"""CLIP-ES's image pass: frozen blocks without gradients, then softmax Grad-CAM on the last block.

Everything works on a batch of images of one padded size; each image has its own labels
(CAM channels) and its own text set for the softmax. Channels of all images are stacked
(``Targets.owner`` says whose each is), so label counts may differ between images.

Two interchangeable Grad-CAM implementations over a shared base:

- ``AutogradSoftmaxGradCAM`` asks autograd for one gradient per label: the readable
  reference, as the CLIP-ES code computes it (image by image).
- ``FusedSoftmaxGradCAM`` (the default) gets the same channel weights for all labels of
  all images from one forward of the last block and a hand-written backward. Grad-CAM only
  needs the token-mean of ``dS_k/dA``, so the backward shares everything that does not
  depend on the label (LayerNorm statistics, ``norm(y) @ W2``, attention maps) and
  collapses the final projections to sums over tokens. Tests check it against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from clipseg_cli.clip.model import LayerNorm, ResidualAttentionBlock, VisionTransformer

AFFINITY_BLOCKS = 8  # CAA averages the attention of the last 8 blocks
# Label-dependent backward tensors are (labels, tokens, 4 * width) and (labels, tokens, tokens);
# labels are taken in chunks so that one such tensor stays under this many elements.
BACKWARD_CHUNK_ELEMENTS = 1 << 26


@dataclass
class FrozenPass:
    """What the frozen blocks 1..L-1 leave for the last block and for CAA, per image."""

    tokens: torch.Tensor  # (B, 1 + N, D): output of block L-1, detached, in the blocks' precision
    attention_sum: torch.Tensor  # (B, 1 + N, 1 + N) float32: sum of head-averaged attention of the kept blocks
    attention_count: int
    grid: tuple[int, int]


@dataclass
class Targets:
    """The Grad-CAM channels of a batch: channel k is text ``index[k]`` in image ``owner[k]``'s softmax.

    ``texts`` holds every text of the batch once; image b's softmax runs over the texts
    where ``member[b]`` is True (its labels and the background set), channel k's without the
    texts where ``exclude[k]`` is True (``--synonyms cam``: the other synonyms of its label).
    """

    texts: torch.Tensor  # (M, E) float32, L2-normalised
    member: torch.Tensor  # (B, M) bool
    owner: torch.Tensor  # (K,) long
    index: torch.Tensor  # (K,) long
    exclude: torch.Tensor | None = None  # (K, M) bool; None: every channel uses its image's softmax

    @classmethod
    def single(cls, texts: torch.Tensor, targets: Sequence[int]) -> Targets:
        """One image whose softmax runs over all of ``texts``."""
        device = texts.device
        return cls(
            texts=texts,
            member=torch.ones(1, texts.shape[0], dtype=torch.bool, device=device),
            owner=torch.zeros(len(targets), dtype=torch.long, device=device),
            index=torch.as_tensor(list(targets), dtype=torch.long, device=device),
        )

    def __len__(self) -> int:
        return int(self.owner.shape[0])

    @property
    def images(self) -> int:
        return int(self.member.shape[0])

    def per_channel(self, t: torch.Tensor) -> torch.Tensor:
        """Rows of a per-image tensor (B, ...) for each channel (K, ...): a view for one image."""
        if t.shape[0] == 1:
            return t.expand(len(self), *t.shape[1:])
        return t.index_select(0, self.owner)

    def pick(self, all_pairs: torch.Tensor) -> torch.Tensor:
        """From (B, X, K) values of every (image, channel) pair, each channel's own: (K, X)."""
        if all_pairs.shape[0] == 1:
            return all_pairs[0].T
        return all_pairs[self.owner, :, torch.arange(len(self), device=all_pairs.device)]

    def matmul(self, lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
        """``lhs[k] @ rhs[owner[k]]`` for per-channel (K, ..., X) and per-image (B, X, Y) operands."""
        if rhs.shape[0] == 1:
            return lhs @ rhs[0]
        return lhs @ rhs.index_select(0, self.owner)

    def chunk(self, start: int, stop: int) -> Targets:
        exclude = None if self.exclude is None else self.exclude[start:stop]
        return Targets(self.texts, self.member, self.owner[start:stop], self.index[start:stop], exclude)

    def channel_member(self) -> torch.Tensor:
        """(K, M): the texts of each channel's softmax."""
        member = self.per_channel(self.member)
        return member if self.exclude is None else member & ~self.exclude


@torch.no_grad()
def run_frozen_blocks(
    visual: VisionTransformer,
    images: torch.Tensor,
    keep: int = AFFINITY_BLOCKS,
    blocks: Sequence[ResidualAttentionBlock] | None = None,
) -> FrozenPass:
    """Blocks 1..L-1 without gradients, summing the attention of those among the last ``keep`` blocks.

    ``images`` (B, 3, h, w). ``blocks``: the frozen blocks to run instead of the model's own
    (a reduced-precision copy); the tokens enter them in their weights' dtype.
    """
    x = visual.embed(images)
    patch = visual.patch_size
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    frozen = list(visual.blocks[:-1]) if blocks is None else list(blocks)
    x = x.to(frozen[0].attn.in_proj_weight.dtype) if frozen else x
    first_kept = len(frozen) + 1 - keep
    total = torch.zeros(x.shape[0], x.shape[1], x.shape[1], device=x.device)
    count = 0
    for i, block in enumerate(frozen):
        x, weights = block(x, need_weights=i >= first_kept)
        if weights is not None:
            total += weights
            count += 1
    return FrozenPass(tokens=x, attention_sum=total, attention_count=count, grid=grid)


def minmax_rows(maps: torch.Tensor) -> torch.Tensor:
    """Each row of (K, N) as ``(x - min) / (max + 1e-7)`` (the reference's ``scale_cam_image``)."""
    maps = maps - maps.amin(dim=-1, keepdim=True)
    return maps / (1e-7 + maps.amax(dim=-1, keepdim=True))


class SoftmaxGradCAM:
    """Grad-CAM of softmax scores over a text set, taken at the last block's ``ln_1`` output.

    ``G = d softmax_k / d A``; channel weights = mean of G over the patch grid;
    ``cam = ReLU(sum_c w_c A_c)``, min-max normalised on the grid (twice, as the reference).
    Subclasses compute the channel weights.
    """

    def channel_weights(
        self, visual: VisionTransformer, frozen: FrozenPass, targets: Targets, logit_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(A patch tokens (B, N, D), weights (K, D), last block's head-averaged attention (B, 1+N, 1+N))."""
        raise NotImplementedError

    def __call__(
        self, visual: VisionTransformer, frozen: FrozenPass, targets: Targets, logit_scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid CAMs (K, h', w') float32 and the last block's attention (B, 1+N, 1+N), on the model's device."""
        activations, weights, last_attention = self.channel_weights(visual, frozen, targets, logit_scale)
        cams = targets.pick(torch.relu(activations @ weights.T[None]))  # (K, N)
        return minmax_rows(minmax_rows(cams)).reshape(len(targets), *frozen.grid), last_attention


def _masked_softmax(logits: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~member, float("-inf")).softmax(dim=-1)


class AutogradSoftmaxGradCAM(SoftmaxGradCAM):
    """One autograd gradient per label through the last block, image by image (the reference's way)."""

    def channel_weights(self, visual, frozen, targets, logit_scale):  # noqa: ANN001, ANN201
        block = visual.blocks[-1]
        acts, attentions = [], []
        weights = frozen.tokens.new_zeros(len(targets), frozen.tokens.shape[-1], dtype=torch.float32)
        owners = targets.owner.tolist()  # the reference path: host-side bookkeeping is fine here
        for b in range(targets.images):
            x = frozen.tokens[b : b + 1].float()
            with torch.enable_grad():
                a = block.ln_1(x).detach().requires_grad_(True)
                y, last_attention = block.forward_from_ln1(x, a, need_weights=True)
                embedding = visual.pool(y)
                embedding = embedding / embedding.norm(dim=-1, keepdim=True)
                logits = logit_scale.exp() * embedding @ targets.texts.to(embedding.dtype).T
                probs = _masked_softmax(logits, targets.member[b : b + 1])[0]
                for k in (k for k, o in enumerate(owners) if o == b):
                    if targets.exclude is not None:  # this channel's own softmax
                        probs = _masked_softmax(logits, (targets.member[b] & ~targets.exclude[k])[None])[0]
                    grad = torch.autograd.grad(probs[targets.index[k]], a, retain_graph=True)[0][0, 1:]
                    weights[k] = grad.float().mean(dim=0)
            acts.append(a.detach()[0, 1:].float())
            attentions.append(last_attention.detach()[0].float())
        return torch.stack(acts), weights, torch.stack(attentions)


def _layer_norm(x: torch.Tensor, ln: LayerNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, normalised input x_hat, 1/std) of a LayerNorm, in float32."""
    mean = x.mean(dim=-1, keepdim=True)
    centred = x - mean
    rstd = torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + ln.eps)
    x_hat = centred * rstd
    return x_hat * ln.weight + ln.bias, x_hat, rstd


def _layer_norm_backward(grad: torch.Tensor, x_hat: torch.Tensor, rstd: torch.Tensor, ln: LayerNorm) -> torch.Tensor:
    g = grad * ln.weight
    return rstd * (g - g.mean(dim=-1, keepdim=True) - x_hat * (g * x_hat).mean(dim=-1, keepdim=True))


class FusedSoftmaxGradCAM(SoftmaxGradCAM):
    """All channels' weights from one forward and one shared, hand-written backward.

    ``per_channel``: the attention backward one channel at a time (True) or all at once
    (False); None (default): one at a time on the CPU, where that is as fast and rounds as
    before batching, all at once on a GPU.
    """

    def __init__(self, per_channel: bool | None = None) -> None:
        self.per_channel = per_channel

    @torch.no_grad()
    def channel_weights(self, visual, frozen, targets, logit_scale):  # noqa: ANN001, ANN201
        block: ResidualAttentionBlock = visual.blocks[-1]
        attn = block.attn
        x = frozen.tokens.float()  # (B, T, D), T = 1 + N
        batch, n_tokens, width = x.shape
        heads, head_dim = attn.heads, width // attn.heads
        scale = head_dim**-0.5

        # Forward of the last block, keeping what the backward needs.
        a, _, _ = _layer_norm(x, block.ln_1)
        q, k, v = (
            t.reshape(batch, n_tokens, heads, head_dim).transpose(1, 2)
            for t in torch.nn.functional.linear(a, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        )
        q_scaled = q * scale
        mean_attention = torch.zeros(batch, n_tokens, n_tokens, device=x.device)
        outs = []
        for h in range(heads):
            probs = (q_scaled[:, h] @ k[:, h].transpose(-2, -1)).softmax(dim=-1)
            outs.append(probs @ v[:, h])
            mean_attention += probs
        mean_attention /= heads
        o = torch.stack(outs, dim=2).reshape(batch, n_tokens, width)
        z = x + attn.out_proj(o)
        n, z_hat, rstd2 = _layer_norm(z, block.ln_2)
        pre = block.mlp.c_fc(n)
        sig = torch.sigmoid(1.702 * pre)
        y = z + block.mlp.c_proj(pre * sig)
        out, y_hat, rstd_post = _layer_norm(y, visual.ln_post)
        embedding = out[:, 1:].mean(dim=1) @ visual.proj  # (B, E)
        norm = embedding.norm(dim=-1, keepdim=True)
        unit = embedding / norm
        text = targets.texts.float()
        logits = logit_scale.exp() * unit @ text.T  # (B, M)
        probs_text = _masked_softmax(logits, targets.member)
        saved = _LastBlock(q_scaled, k, v, z_hat, rstd2, pre, sig, y_hat, rstd_post, unit, norm, probs_text, logits)

        # The label-dependent backward, in chunks of channels so memory stays bounded.
        per_chunk = max(1, BACKWARD_CHUNK_ELEMENTS // (n_tokens * max(4 * width, n_tokens)))
        weights = [self._backward(visual, saved, targets.chunk(s, s + per_chunk), logit_scale) for s in range(0, len(targets), per_chunk)]
        weights = torch.cat(weights) if weights else x.new_zeros(0, width)
        return a[:, 1:], weights, mean_attention

    def _backward(self, visual: VisionTransformer, s: _LastBlock, targets: Targets, logit_scale: torch.Tensor) -> torch.Tensor:
        """(K, D): the token-mean of ``d softmax_k / d A`` for each channel of ``targets``."""
        block: ResidualAttentionBlock = visual.blocks[-1]
        attn = block.attn
        c_fc, c_proj = block.mlp.c_fc, block.mlp.c_proj
        batch, n_tokens, width = s.y_hat.shape
        heads, head_dim = attn.heads, width // attn.heads
        scale = head_dim**-0.5
        n_patches = n_tokens - 1
        n_targets = len(targets)
        device = s.y_hat.device
        per = targets.per_channel

        # From the softmax to the pooled patch features.
        text = targets.texts.float()
        p = per(s.probs_text) if targets.exclude is None else _masked_softmax(per(s.logits), targets.channel_member())  # (K, M)
        one_hot = torch.zeros_like(p)
        one_hot[torch.arange(n_targets, device=device), targets.index] = 1.0
        g_logits = p.gather(1, targets.index[:, None]) * (one_hot - p)  # d s_k / d logits
        g_unit = logit_scale.exp() * g_logits @ text
        unit = per(s.unit)
        along = (g_unit @ s.unit[0])[:, None] if batch == 1 else (g_unit * unit).sum(dim=-1, keepdim=True)
        g_embedding = (g_unit - along * unit) / per(s.norm)
        g_pooled = g_embedding @ visual.proj.T / n_patches  # same for every patch token

        # ln_post backward, per token: rstd_i * (c_k - y_hat_i * (y_hat_i . u_k) / D), class token 0.
        u = g_pooled * visual.ln_post.weight  # (K, D)
        c = u - u.mean(dim=-1, keepdim=True)
        dots = targets.pick(s.y_hat @ u.T[None]) / width  # (K, T)
        patch_rows = torch.ones(n_tokens, 1, device=device)
        patch_rows[0] = 0.0
        r = per(s.rstd_post * patch_rows)  # (K, T, 1)
        g_y = r * (c[:, None, :] - dots[:, :, None] * per(s.y_hat))  # (K, T, D)

        # MLP backward: g_y @ W2 shares y_hat @ W2 across labels.
        y_hat_w2 = s.y_hat @ c_proj.weight  # (B, T, 4D), once
        g_act = r * ((c @ c_proj.weight)[:, None, :] - dots[:, :, None] * per(y_hat_w2))
        g_pre = g_act * per(s.sig * (1.0 + 1.702 * s.pre * (1.0 - s.sig)))
        g_n = g_pre @ c_fc.weight  # (K, T, D)
        g_z = g_y + _layer_norm_backward(g_n, per(s.z_hat), per(s.rstd2), block.ln_2)
        g_o = (g_z @ attn.out_proj.weight).reshape(n_targets, n_tokens, heads, head_dim)

        # Attention backward, summed over patch tokens: only sums of dQ, dK, dV are needed.
        sum_dq = torch.empty(n_targets, heads, head_dim, device=device)
        sum_dk = torch.empty_like(sum_dq)
        sum_dv = torch.empty_like(sum_dq)
        per_channel = device.type == "cpu" if self.per_channel is None else self.per_channel
        owners = targets.owner.tolist() if per_channel else None
        for h in range(heads):
            q_h, k_h, v_h = s.q_scaled[:, h], s.k[:, h], s.v[:, h]  # (B, T, hd)
            probs = (q_h @ k_h.transpose(-2, -1)).softmax(dim=-1)  # recomputed: one head in memory at a time
            to_patches = probs[:, :, 1:].sum(dim=-1)  # (B, T) attention each query pays to patch keys
            g_oh = g_o[:, :, h]  # (K, T, hd)
            if owners is not None:
                # One channel at a time: the (T, T) temporaries stay in the CPU's cache.
                for j, b in enumerate(owners):
                    d_probs = g_oh[j] @ v_h[b].T
                    d_scores = probs[b] * (d_probs - (d_probs * probs[b]).sum(dim=-1, keepdim=True))
                    sum_dq[j, h] = scale * (d_scores[1:].sum(dim=0) @ k_h[b])
                    sum_dk[j, h] = d_scores[:, 1:].sum(dim=1) @ q_h[b]
                    sum_dv[j, h] = to_patches[b] @ g_oh[j]
                continue
            # All channels at once: a few large kernels instead of many small ones (a GPU).
            probs = per(probs)  # (K, T, T)
            d_probs = targets.matmul(g_oh, v_h.transpose(-2, -1))
            d_scores = probs * (d_probs - (d_probs * probs).sum(dim=-1, keepdim=True))
            sum_dq[:, h] = scale * targets.matmul(d_scores[:, 1:].sum(dim=1)[:, None], k_h)[:, 0]
            sum_dk[:, h] = targets.matmul(d_scores[:, :, 1:].sum(dim=2)[:, None], q_h)[:, 0]
            sum_dv[:, h] = (per(to_patches)[:, None] @ g_oh)[:, 0]
        sum_dqkv = torch.cat([t.reshape(n_targets, width) for t in (sum_dq, sum_dk, sum_dv)], dim=1)
        return sum_dqkv @ attn.in_proj_weight / n_patches  # (K, D): token-mean of dS_k/dA


@dataclass
class _LastBlock:
    """The last block's forward values that the fused backward reads (per image)."""

    q_scaled: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    z_hat: torch.Tensor
    rstd2: torch.Tensor
    pre: torch.Tensor
    sig: torch.Tensor
    y_hat: torch.Tensor
    rstd_post: torch.Tensor
    unit: torch.Tensor
    norm: torch.Tensor
    probs_text: torch.Tensor
    logits: torch.Tensor  # (B, M): for channels with their own softmax (Targets.exclude)
