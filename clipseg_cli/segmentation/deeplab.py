"""DeepLabV2: a dilated ResNet (output stride 8) and ASPP of four summed 3x3 convolutions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipseg_cli.errors import ConfigError
from clipseg_cli.segmentation.resnet import ResNet, Style, dilated_resnet

ASPP_RATES = (6, 12, 18, 24)
ARCHS: dict[str, int] = {
    "deeplabv2-resnet101": 101,
    "deeplabv2-resnet50": 50,
    "deeplabv2-resnet18": 18,
}
DEFAULT_ARCH = "deeplabv2-resnet101"


@dataclass(frozen=True)
class Normalization:
    """How pixels enter the network: ``(pixel - mean) / std`` in 0..255 units, channels RGB or BGR."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "bgr": self.bgr}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalization":
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]), bool(d["bgr"]))

    @property
    def mean_rgb(self) -> np.ndarray:
        """The mean pixel in RGB order (what crops are padded with)."""
        mean = np.asarray(self.mean, np.float32)
        return mean[::-1].copy() if self.bgr else mean

    def apply(self, image_rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB uint8/float in 0..255 -> (3, H, W) float32 network input."""
        x = image_rgb.astype(np.float32)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


# torchvision's ImageNet statistics (0..255 units), for torchvision-layout and random init.
IMAGENET_NORM = Normalization((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), bgr=False)
# DeepLab's Caffe models: BGR, mean subtracted, no scaling.
CAFFE_NORM = Normalization((104.008, 116.669, 122.675), (1.0, 1.0, 1.0), bgr=True)


class ASPP(nn.Module):
    """Four parallel 3x3 convolutions at ``rates`` straight to class scores; outputs are summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ASPP_RATES) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r, bias=True) for r in rates)
        for conv in self.convs:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """``backbone`` (dilated ResNet, stride 8) + ``head`` (ASPP). ``forward`` gives stride-8 logits."""

    def __init__(self, depth: int, num_classes: int, style: Style = "pytorch") -> None:
        super().__init__()
        self.backbone: ResNet = dilated_resnet(depth, style)
        self.head = ASPP(self.backbone.out_channels, num_classes)
        self.num_classes = num_classes
        self.bn_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def freeze_bn(self) -> None:
        """Keep BatchNorm statistics and affine parameters fixed (used with pre-trained init)."""
        self.bn_frozen = True
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
                for p in m.parameters():
                    p.requires_grad_(False)

    def train(self, mode: bool = True) -> "DeepLabV2":
        super().train(mode)
        if mode and self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def head_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.head.named_parameters(prefix="head")


def arch_depth(arch: str) -> int:
    """ResNet depth of an ``--arch`` name; ConfigError for unknown names."""
    try:
        return ARCHS[arch]
    except KeyError:
        raise ConfigError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}") from None


def build_deeplabv2(arch: str, num_classes: int, style: Style = "pytorch") -> DeepLabV2:
    return DeepLabV2(arch_depth(arch), num_classes, style)


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) logits to ``size`` (align_corners=False)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def model_config(arch: str, num_classes: int, style: Style, norm: Normalization) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the network exactly."""
    return {"arch": arch, "num_classes": num_classes, "style": style, "normalization": norm.to_dict()}


__all__ = [
    "ARCHS",
    "ASPP",
    "ASPP_RATES",
    "CAFFE_NORM",
    "DEFAULT_ARCH",
    "DeepLabV2",
    "IMAGENET_NORM",
    "Normalization",
    "arch_depth",
    "build_deeplabv2",
    "model_config",
    "upsample_logits",
]
