"""CLIP's byte-pair tokenizer (exact OpenAI BPE via instant-clip-tokenizer)."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


@lru_cache(maxsize=1)
def _tokenizer():  # noqa: ANN202 - the library has no type stubs
    from instant_clip_tokenizer import Tokenizer

    return Tokenizer()


def tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """(N, context_length) int64 ids with start/end tokens, zero padded, truncated if too long."""
    ids = _tokenizer().tokenize_batch(list(texts), context_length=context_length)
    return torch.from_numpy(ids.astype("int64"))
