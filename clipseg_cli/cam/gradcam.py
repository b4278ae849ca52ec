"""CLIP-ES's image pass: frozen blocks without gradients, then softmax Grad-CAM on the last block.

Two interchangeable Grad-CAM implementations over a shared base:

- ``AutogradSoftmaxGradCAM`` asks autograd for one gradient per label: the readable
  reference, as the CLIP-ES code computes it.
- ``FusedSoftmaxGradCAM`` (the default) gets the same channel weights for all labels
  from one forward of the last block and a hand-written backward. Grad-CAM only needs
  the token-mean of ``dS_k/dA``, so the backward shares everything that does not depend
  on the label (LayerNorm statistics, ``norm(y) @ W2``, attention maps) and collapses
  the final projections to sums over tokens. Tests check it against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from clipseg_cli.cam.normalize import minmax
from clipseg_cli.clip.model import LayerNorm, ResidualAttentionBlock, VisionTransformer

AFFINITY_BLOCKS = 8  # CAA averages the attention of the last 8 blocks


@dataclass
class FrozenPass:
    """What the frozen blocks 1..L-1 leave for the last block and for CAA."""

    tokens: torch.Tensor  # (1, 1 + N, D): output of block L-1, detached
    attention_sum: torch.Tensor  # (1 + N, 1 + N): sum of head-averaged attention of the kept blocks
    attention_count: int
    grid: tuple[int, int]


@torch.no_grad()
def run_frozen_blocks(visual: VisionTransformer, image: torch.Tensor, keep: int = AFFINITY_BLOCKS) -> FrozenPass:
    """Blocks 1..L-1 without gradients, summing the attention of those among the last ``keep`` blocks."""
    x = visual.embed(image)
    patch = visual.patch_size
    grid = (image.shape[-2] // patch, image.shape[-1] // patch)
    blocks = visual.blocks
    first_kept = len(blocks) - keep
    total, count = torch.zeros(x.shape[1], x.shape[1], device=x.device), 0
    for i, block in enumerate(blocks[:-1]):
        x, weights = block(x, need_weights=i >= first_kept)
        if weights is not None:
            total += weights[0].float()
            count += 1
    return FrozenPass(tokens=x, attention_sum=total, attention_count=count, grid=grid)


class SoftmaxGradCAM:
    """Grad-CAM of softmax scores over a text set, taken at the last block's ``ln_1`` output.

    ``G = d softmax_k / d A``; channel weights = mean of G over the patch grid;
    ``cam = ReLU(sum_c w_c A_c)``, min-max normalised on the grid (twice, as the reference).
    Subclasses compute the channel weights.
    """

    def channel_weights(
        self,
        visual: VisionTransformer,
        frozen: FrozenPass,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: Sequence[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (A patch tokens (N, D), weights (K, D), last block's head-averaged attention (1+N, 1+N))."""
        raise NotImplementedError

    def __call__(
        self,
        visual: VisionTransformer,
        frozen: FrozenPass,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: Sequence[int],
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Returns grid CAMs (len(targets), h', w') float32 and the last block's attention (1+N, 1+N)."""
        activations, weights, last_attention = self.channel_weights(visual, frozen, text_features, logit_scale, targets)
        cams = torch.relu(activations @ weights.T).T.reshape(len(targets), *frozen.grid).cpu().numpy()
        cams = np.stack([minmax(minmax(c)) for c in cams]) if len(targets) else cams.astype(np.float32)
        return cams, last_attention


class AutogradSoftmaxGradCAM(SoftmaxGradCAM):
    """One autograd gradient per label through the last block (the reference's way)."""

    def channel_weights(self, visual, frozen, text_features, logit_scale, targets):  # noqa: ANN001, ANN201
        block = visual.blocks[-1]
        x = frozen.tokens
        with torch.enable_grad():
            a = block.ln_1(x).detach().requires_grad_(True)
            y, last_attention = block.forward_from_ln1(x, a, need_weights=True)
            embedding = visual.pool(y)
            embedding = embedding / embedding.norm(dim=-1, keepdim=True)
            logits = logit_scale.exp() * embedding @ text_features.to(embedding.dtype).T
            probs = logits.softmax(dim=-1)[0]
            grads = [torch.autograd.grad(probs[t], a, retain_graph=True)[0][0, 1:] for t in targets]
        weights = torch.stack(grads).float().mean(dim=1) if grads else a.new_zeros(0, a.shape[-1])
        return a.detach()[0, 1:].float(), weights, last_attention.detach()[0].float()


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
    """All labels' channel weights from one forward and one shared, hand-written backward."""

    @torch.no_grad()
    def channel_weights(self, visual, frozen, text_features, logit_scale, targets):  # noqa: ANN001, ANN201
        block: ResidualAttentionBlock = visual.blocks[-1]
        attn = block.attn
        x = frozen.tokens[0].float()  # (T, D), T = 1 + N
        n_tokens, width = x.shape
        heads, head_dim = attn.heads, width // attn.heads
        scale = head_dim**-0.5
        n_patches = n_tokens - 1

        # Forward of the last block, keeping what the backward needs.
        a, _, _ = _layer_norm(x, block.ln_1)
        q, k, v = (
            t.reshape(n_tokens, heads, head_dim).transpose(0, 1)
            for t in torch.nn.functional.linear(a, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        )
        q_scaled = q * scale
        mean_attention = torch.zeros(n_tokens, n_tokens, device=x.device)
        outs = []
        for h in range(heads):
            probs = (q_scaled[h] @ k[h].T).softmax(dim=-1)
            outs.append(probs @ v[h])
            mean_attention += probs
        mean_attention /= heads
        o = torch.stack(outs, dim=1).reshape(n_tokens, width)
        z = x + attn.out_proj(o)
        n, z_hat, rstd2 = _layer_norm(z, block.ln_2)
        c_fc, c_proj = block.mlp.c_fc, block.mlp.c_proj
        pre = c_fc(n)
        sig = torch.sigmoid(1.702 * pre)
        y = z + c_proj(pre * sig)
        out, y_hat, rstd_post = _layer_norm(y, visual.ln_post)
        embedding = out[1:].mean(dim=0) @ visual.proj
        norm = embedding.norm()
        unit = embedding / norm
        text = text_features.float()
        probs_text = (logit_scale.exp() * unit @ text.T).softmax(dim=-1)

        # Backward, all K labels at once, from the softmax to the pooled patch features.
        targets_t = torch.as_tensor(list(targets), dtype=torch.long, device=x.device)
        n_targets = len(targets_t)
        one_hot = torch.zeros(n_targets, text.shape[0], device=x.device)
        one_hot[torch.arange(n_targets), targets_t] = 1.0
        g_logits = probs_text[targets_t, None] * (one_hot - probs_text)  # d s_k / d logits
        g_unit = logit_scale.exp() * g_logits @ text
        g_embedding = (g_unit - (g_unit @ unit)[:, None] * unit) / norm
        g_pooled = g_embedding @ visual.proj.T / n_patches  # same for every patch token

        # ln_post backward, per token: rstd_i * (c_k - y_hat_i * (y_hat_i . u_k) / D), class token 0.
        u = g_pooled * visual.ln_post.weight  # (K, D)
        c = u - u.mean(dim=-1, keepdim=True)
        dots = (y_hat @ u.T) / width  # (T, K)
        patch_rows = torch.ones(n_tokens, 1, device=x.device)
        patch_rows[0] = 0.0
        r = rstd_post * patch_rows  # (T, 1)
        g_y = r[None] * (c[:, None, :] - dots.T[:, :, None] * y_hat[None])  # (K, T, D)

        # MLP backward: g_y @ W2 shares y_hat @ W2 across labels.
        y_hat_w2 = y_hat @ c_proj.weight  # (T, 4D), once
        g_act = r[None] * ((c @ c_proj.weight)[:, None, :] - dots.T[:, :, None] * y_hat_w2[None])
        g_pre = g_act * (sig * (1.0 + 1.702 * pre * (1.0 - sig)))
        g_n = g_pre @ c_fc.weight  # (K, T, D)
        g_z = g_y + _layer_norm_backward(g_n, z_hat, rstd2, block.ln_2)
        g_o = (g_z @ attn.out_proj.weight).reshape(n_targets, n_tokens, heads, head_dim)

        # Attention backward, summed over patch tokens: only sums of dQ, dK, dV are needed.
        sum_dq = torch.empty(n_targets, heads, head_dim, device=x.device)
        sum_dk = torch.empty_like(sum_dq)
        sum_dv = torch.empty_like(sum_dq)
        for h in range(heads):
            probs = (q_scaled[h] @ k[h].T).softmax(dim=-1)  # recomputed: one head in memory at a time
            to_patches = probs[:, 1:].sum(dim=1)  # (T,) attention each query pays to patch keys
            for j in range(n_targets):
                g_oh = g_o[j, :, h]  # (T, hd)
                d_probs = g_oh @ v[h].T
                d_scores = probs * (d_probs - (d_probs * probs).sum(dim=-1, keepdim=True))
                sum_dq[j, h] = scale * (d_scores[1:].sum(dim=0) @ k[h])
                sum_dk[j, h] = d_scores[:, 1:].sum(dim=1) @ q_scaled[h]
                sum_dv[j, h] = to_patches @ g_oh
        sum_dqkv = torch.cat([s.reshape(n_targets, width) for s in (sum_dq, sum_dk, sum_dv)], dim=1)
        weights = sum_dqkv @ attn.in_proj_weight / n_patches  # (K, D): token-mean of dS_k/dA
        return a[1:], weights, mean_attention
