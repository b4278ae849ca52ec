"""Text features for prompts, cached: template-averaged, L2-normalised CLIP text embeddings."""

from __future__ import annotations

from typing import Sequence

import torch

from clipseg_cli.clip.model import CLIP
from clipseg_cli.clip.tokenizer import tokenize


class TextEncoder:
    """Encodes names through one or more templates; each name is encoded once per run.

    With several templates: normalise each feature, average, normalise again.
    """

    def __init__(self, model: CLIP, templates: Sequence[str], batch_size: int = 256) -> None:
        if not templates:
            raise ValueError("at least one template is needed")
        self.model = model
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.model.token_embedding.weight.device

    @torch.no_grad()
    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = tokenize(texts[start : start + self.batch_size], self.model.config.context_length)
            feats = self.model.encode_text(tokens.to(self.device)).float()
            out.append(feats / feats.norm(dim=-1, keepdim=True))
        return torch.cat(out)

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """(len(names), E) float32 features; an empty list gives (0, E)."""
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            texts = [t.format(n) for n in missing for t in self.templates]
            feats = self._encode_texts(texts).reshape(len(missing), len(self.templates), -1).mean(dim=1)
            feats = feats / feats.norm(dim=-1, keepdim=True)
            self._cache.update(zip(missing, feats))
        if not names:
            return torch.zeros(0, self.model.text_projection.shape[1], device=self.device)
        return torch.stack([self._cache[n] for n in names])

    def encode_groups(self, groups: Sequence[Sequence[str]]) -> torch.Tensor:
        """One feature per group of synonyms: the normalised mean of the members' features."""
        feats = [self.encode(list(g)).mean(dim=0) for g in groups]
        if not feats:
            return self.encode([])
        stacked = torch.stack(feats)
        return stacked / stacked.norm(dim=-1, keepdim=True)
