"""CLIP-ES's image pass: frozen blocks without gradients, then softmax Grad-CAM on the last block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from clipseg_cli.cam.normalize import minmax
from clipseg_cli.clip.model import VisionTransformer

AFFINITY_BLOCKS = 8  # CAA averages the attention of the last 8 blocks


@dataclass
class FrozenPass:
    """What the frozen blocks 1..L-1 leave for the last block and for CAA."""

    tokens: torch.Tensor  # (1, 1 + h'w', D): output of block L-1, detached
    attention: list[torch.Tensor]  # head-averaged attention (1+N, 1+N) of the kept blocks
    grid: tuple[int, int]


@torch.no_grad()
def run_frozen_blocks(visual: VisionTransformer, image: torch.Tensor, keep: int = AFFINITY_BLOCKS) -> FrozenPass:
    """Blocks 1..L-1 without gradients, keeping the attention of those among the last ``keep`` blocks."""
    x = visual.embed(image)
    patch = visual.patch_size
    grid = (image.shape[-2] // patch, image.shape[-1] // patch)
    blocks = visual.blocks
    first_kept = len(blocks) - keep
    attention = []
    for i, block in enumerate(blocks[:-1]):
        x, weights = block(x, need_weights=i >= first_kept)
        if weights is not None:
            attention.append(weights[0])
    return FrozenPass(tokens=x, attention=attention, grid=grid)


class SoftmaxGradCAM:
    """Grad-CAM of softmax scores over a text set, taken at the last block's ``ln_1`` output.

    ``G = d softmax_k / d A``; channel weights = mean of G over the patch grid;
    ``cam = ReLU(sum_c w_c A_c)``, min-max normalised on the grid (twice, as the reference).
    """

    def __call__(
        self,
        visual: VisionTransformer,
        frozen: FrozenPass,
        text_features: torch.Tensor,
        logit_scale: torch.Tensor,
        targets: Sequence[int],
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Returns grid CAMs (len(targets), h', w') float32 and the last block's attention (1+N, 1+N)."""
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
        activations = a.detach()[0, 1:].float()  # (N, D) patch tokens
        weights = torch.stack(grads).float().mean(dim=1)  # (K, D)
        cams = torch.relu(activations @ weights.T).T.reshape(len(targets), *frozen.grid).cpu().numpy()
        cams = np.stack([minmax(minmax(c)) for c in cams]) if len(targets) else cams.astype(np.float32)
        return cams, last_attention.detach()[0]
