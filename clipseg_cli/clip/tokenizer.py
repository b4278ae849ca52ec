"""CLIP's byte-pair tokenizer (exact OpenAI BPE via instant-clip-tokenizer)."""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

import torch

from clipseg_cli.errors import ConfigError

CONTEXT_LENGTH = 77  # tokens the text tower of every OpenAI CLIP reads, start and end included


@lru_cache(maxsize=1)
def _tokenizer():  # noqa: ANN202 - the library has no type stubs
    from instant_clip_tokenizer import Tokenizer

    return Tokenizer()


def token_count(text: str) -> int:
    """Tokens CLIP reads for ``text``: its byte-pair tokens plus the start and end tokens."""
    return len(_tokenizer().encode(text)) + 2


def template_too_long(template: str, names: Iterable[str], context_length: int = CONTEXT_LENGTH) -> str | None:
    """Why ``template`` cannot hold every one of ``names`` within ``context_length`` tokens, or None."""
    counts = [(token_count(template.format(name)), name) for name in dict.fromkeys(names)]
    if not counts:
        return None
    count, name = max(counts, key=lambda pair: pair[0])
    if count <= context_length:
        return None
    return f"{count} tokens with {name!r}; CLIP reads at most {context_length}, the rest (the class name) would be cut off"


def tokenize(texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """(N, context_length) int64 ids with start/end tokens, zero padded.

    A text longer than ``context_length`` tokens is a ConfigError: cut, it would lose what
    follows (in a prompt, usually the class name), and every class would read the same.
    """
    ids = _tokenizer().tokenize_batch(list(texts), context_length=context_length)
    for text, row in zip(texts, ids):
        if row[-1] != 0 and token_count(text) > context_length:
            raise ConfigError(f"prompt {text!r} is {token_count(text)} tokens; CLIP reads at most {context_length}")
    return torch.from_numpy(ids.astype("int64"))
