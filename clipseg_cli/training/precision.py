"""``--precision fp32|bf16``: the forward pass and loss under autocast.

``bf16`` runs the matrix products and convolutions in bfloat16 (``torch.autocast``) while the
parameters, their gradients and the optimizer state stay float32; bfloat16 has float32's range, so
no loss scaling is needed. On CUDA it needs a GPU with bfloat16 support (Ampere or newer). On the
CPU it runs too (CPU autocast), which is what the tests use; it is rarely faster there.
``fp32`` (the default) runs everything in float32.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from clipseg_cli.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError for an unknown name or bf16 on a GPU without bfloat16."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bfloat16 support; use --precision fp32")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """Autocast to bfloat16 for ``bf16``; nothing for ``fp32``."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
