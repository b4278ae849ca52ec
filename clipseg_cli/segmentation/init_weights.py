"""Reading ``--init`` files and loading them into a DeepLabV2, with strict key checks.

Accepted files (all read with ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
``{"model": ...}`` wrapper and ``module.`` / ``base.`` key prefixes are unwrapped):

1. **torchvision-layout ResNet** state dicts (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``
   ... ``fc.*``), e.g. torchvision's ``resnet101-cd907fc2.pth`` / ``resnet101-5d3b4d8f.pth`` (the
   "ImageNet init" of CLIP-ES, often renamed ``resnet-101_v2.pth``), ``resnet50-*.pth``,
   ``resnet18-*.pth``. ``fc.*`` is dropped; every other key must match the ResNet of ``--arch``.
   Input normalisation: RGB, ImageNet mean/std.
2. **DeepLab's Caffe models converted by kazuto1011/deeplab-pytorch**: the COCO-pretrained
   ``deeplabv1_resnet101-coco.pth`` (keys ``layer1.conv1.conv.weight``,
   ``layer2.block1.reduce.conv.weight``, ..., ``layer5.block3.increase.bn.running_var``,
   ``fc.*``: the "COCO init" of CLIP-ES) and the VOC ``deeplabv2_resnet101_msc-*.pth`` files
   (same keys under ``base.``, plus ``aspp.c0..c3``). Keys are mapped to torchvision names
   (deeplab-pytorch ``layerK`` is torchvision ``layer{K-1}``; ``reduce/conv3x3/increase/shortcut``
   are ``conv1/conv2/conv3/downsample``); the network is built Caffe-style (stride in the first 1x1
   convolution, ceil-mode max pooling) and fed BGR images minus DeepLab's mean. ``fc.*`` is
   dropped; ``aspp.*`` is loaded when its number of classes matches.
3. **Our own checkpoints** (``RUN/last.pt``, ``RUN/best.pt``, kind ``deeplabv2``): backbone, and
   the ASPP head when the number of classes matches; style and normalisation come along.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from clipseg_cli.errors import ConfigError
from clipseg_cli.io.torch_files import load_torch_file
from clipseg_cli.segmentation.deeplab import (
    ARCHS,
    CAFFE_NORM,
    IMAGENET_NORM,
    DeepLabV2,
    Normalization,
)
from clipseg_cli.segmentation.resnet import RESNET_SPECS, Style

ACCEPTED = (
    "a torchvision ResNet state dict (resnet18/50/101-*.pth), deeplab-pytorch's "
    "deeplabv1_resnet101-coco.pth / deeplabv2_resnet101_msc-*.pth, or a wsss-label checkpoint"
)


@dataclass
class InitWeights:
    """A parsed ``--init`` file, keys already in our layout."""

    path: Path
    source: str  # "torchvision" | "deeplab-caffe" | "checkpoint"
    depth: int
    style: Style
    norm: Normalization
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] = field(default_factory=dict)


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConfigError(f"--init {path}: not a state dict of tensors; expected {ACCEPTED}")
    sd = dict(obj)
    for prefix in ("module.", "base."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _blocks_per_layer(sd: Mapping[str, torch.Tensor]) -> tuple[int, ...]:
    counts = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    return tuple(counts)


def _depth_of(sd: Mapping[str, torch.Tensor], path: Path) -> int:
    blocks = _blocks_per_layer(sd)
    bottleneck = "layer1.0.conv3.weight" in sd
    for depth, spec in RESNET_SPECS.items():
        if spec.blocks == blocks and spec.bottleneck == bottleneck:
            return depth
    raise ConfigError(f"--init {path}: a ResNet with {blocks} blocks per stage is not ResNet-18/34/50/101/152")


_CAFFE_PART = {"reduce": "1", "conv3x3": "2", "increase": "3"}


def _caffe_to_torchvision(key: str) -> str | None:
    """deeplab-pytorch (Caffe-converted) key -> our key; None for keys we drop (``fc``)."""
    if key.startswith("fc."):
        return None
    m = re.fullmatch(r"aspp\.c(\d+)\.(weight|bias)", key)
    if m:
        return f"head.convs.{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"layer1\.conv1\.(conv|bn)\.(\w+)", key)
    if m:
        return f"{'conv1' if m.group(1) == 'conv' else 'bn1'}.{m.group(2)}"
    m = re.fullmatch(r"layer(\d)\.block(\d+)\.(reduce|conv3x3|increase|shortcut)\.(conv|bn)\.(\w+)", key)
    if not m:
        raise KeyError(key)
    stage, block, part, op, param = m.groups()
    prefix = f"layer{int(stage) - 1}.{int(block) - 1}"
    if part == "shortcut":
        return f"{prefix}.downsample.{0 if op == 'conv' else 1}.{param}"
    return f"{prefix}.{'conv' if op == 'conv' else 'bn'}{_CAFFE_PART[part]}.{param}"


def _split_head(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    head = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
    backbone = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return backbone, head


def read_init(path: str | Path, obj: Any = None) -> InitWeights:
    """Parse an ``--init`` file (see the module docstring); ConfigError if it is none of those.
    ``obj``: the file's content when the caller has read it already."""
    path = Path(path)
    if obj is None:
        obj = load_torch_file(path, "--init")
    if isinstance(obj, Mapping) and obj.get("kind") == "deeplabv2" and isinstance(obj.get("model"), Mapping):
        sd = dict(obj["model"])
        backbone = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
        head = {k[len("head.") :]: v for k, v in sd.items() if k.startswith("head.")}
        cfg = obj.get("model_config", {})
        return InitWeights(
            path,
            "checkpoint",
            ARCHS.get(cfg.get("arch", ""), 0) or _depth_of(backbone, path),
            cfg.get("style", "pytorch"),
            Normalization.from_dict(cfg["normalization"]) if "normalization" in cfg else IMAGENET_NORM,
            backbone,
            head,
        )
    if isinstance(obj, Mapping) and "kind" in obj:
        raise ConfigError(f"--init {path}: a {obj.get('kind')!r} checkpoint cannot initialise DeepLabV2")
    sd = _unwrap(obj, path)
    if "layer1.conv1.conv.weight" in sd:
        mapped: dict[str, torch.Tensor] = {}
        for key, value in sd.items():
            try:
                new = _caffe_to_torchvision(key)
            except KeyError:
                raise ConfigError(f"--init {path}: unexpected key {key!r} for a deeplab-pytorch model") from None
            if new is not None:
                mapped[new] = value
        backbone, head = _split_head(mapped)
        return InitWeights(path, "deeplab-caffe", _depth_of(backbone, path), "caffe", CAFFE_NORM, backbone, head)
    if "conv1.weight" in sd and "bn1.weight" in sd:
        backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        return InitWeights(path, "torchvision", _depth_of(backbone, path), "pytorch", IMAGENET_NORM, backbone)
    shown = ", ".join(list(sd)[:3])
    raise ConfigError(f"--init {path}: unrecognised keys ({shown}, ...); expected {ACCEPTED}")


def _check_keys(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], path: Path, part: str) -> None:
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        bits = []
        if missing:
            bits.append(f"missing {len(missing)} key(s) e.g. {missing[0]!r}")
        if unexpected:
            bits.append(f"unexpected {len(unexpected)} key(s) e.g. {unexpected[0]!r}")
        raise ConfigError(f"--init {path}: {part} keys do not match: {'; '.join(bits)}")
    for k, v in given.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ConfigError(f"--init {path}: {part} {k!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")


def apply_init(model: DeepLabV2, init: InitWeights, arch: str) -> str:
    """Load ``init`` into ``model`` (strict on the backbone); return a one-line summary."""
    if init.depth != model.backbone.depth:
        hint = next((a for a, d in ARCHS.items() if d == init.depth), None)
        tip = f"; pass --arch {hint}" if hint else ""
        raise ConfigError(f"--init {init.path} holds a ResNet-{init.depth} but --arch {arch} is ResNet-{model.backbone.depth}{tip}")
    expected = model.backbone.state_dict()
    _check_keys(expected, init.backbone, init.path, "backbone")
    sd = {k: v.to(expected[k].dtype) for k, v in init.backbone.items()}
    for k, v in expected.items():
        sd.setdefault(k, torch.zeros_like(v))  # num_batches_tracked absent from old files
    model.backbone.load_state_dict(sd, strict=True)
    note = f"{init.source} ResNet-{init.depth} backbone from {init.path.name}"
    if init.head:
        head_expected = model.head.state_dict()
        if set(init.head) == set(head_expected) and all(init.head[k].shape == head_expected[k].shape for k in head_expected):
            model.head.load_state_dict(init.head, strict=True)
            note += " + ASPP head"
        else:
            note += " (its head has another number of classes: ASPP head initialised afresh)"
    return note
