"""Reading CLIP checkpoints: OpenAI's TorchScript archives and plain state dicts.

The architecture is read from the tensor shapes, as OpenAI's ``build_model`` does,
so any ViT CLIP (B/32, B/16, L/14, or a tiny test model) loads.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from clipseg_cli.clip.model import CLIP, CLIPConfig
from clipseg_cli.errors import WeightsError
from clipseg_cli.io.torch_files import load_error_reason

# Entries of OpenAI's TorchScript state dict that are not parameters.
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, on the CPU. Raises WeightsError with one line if unreadable.

    A plain state dict is read with ``weights_only=True`` (no code runs). A TorchScript
    archive (OpenAI's published format) is opened with ``torch.jit.load``, which runs
    no Python code from the file either.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"CLIP weights not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols and TorchScript
            if _is_torchscript_archive(path):
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the same user problem
        raise WeightsError(f"cannot read CLIP weights {path}: {load_error_reason(exc)}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} is not a CLIP checkpoint (expected a state dict of tensors)")
    return {re.sub(r"^module\.", "", k): v for k, v in state.items() if k not in _NON_PARAMETER_KEYS}


def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> CLIPConfig:
    if "visual.proj" not in state:
        if any(k.startswith("visual.layer1") for k in state):
            raise WeightsError("ResNet CLIP checkpoints are not supported; CLIP-ES needs a ViT CLIP (e.g. ViT-B/16)")
        raise WeightsError("not a CLIP checkpoint in OpenAI's key layout (visual.proj missing)")
    try:
        vision_width = state["visual.conv1.weight"].shape[0]
        patch = state["visual.conv1.weight"].shape[-1]
        vision_layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        text_width = state["ln_final.weight"].shape[0]
        text_layers = len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")})
        return CLIPConfig(
            embed_dim=state["text_projection"].shape[1],
            image_resolution=patch * grid,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=patch,
            context_length=state["positional_embedding"].shape[0],
            vocab_size=state["token_embedding.weight"].shape[0],
            text_width=text_width,
            text_heads=max(1, text_width // 64),
            text_layers=text_layers,
        )
    except KeyError as exc:
        raise WeightsError(f"not a complete CLIP checkpoint: {exc.args[0]} missing") from None


def build_clip(state: Mapping[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> CLIP:
    """A frozen CLIP in eval mode with the checkpoint's weights, in ``dtype``."""
    model = CLIP(config_from_state_dict(state))
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise WeightsError(f"CLIP checkpoint does not match the architecture read from it: {detail}")
    model.to(dtype).eval().requires_grad_(False)
    return model


def load_clip(path: str | Path, device: torch.device | str = "cpu") -> CLIP:
    return build_clip(read_state_dict(path)).to(device)
