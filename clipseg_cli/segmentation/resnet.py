"""ResNet-18/34/50/101/152 in plain torch, with torchvision's state-dict key layout.

Keys are ``conv1``, ``bn1``, ``layer1``..``layer4``; blocks are ``conv1/bn1/conv2/bn2[/conv3/bn3]``
and ``downsample.0`` (1x1 conv) / ``downsample.1`` (BN), so torchvision-format files load as they
are. There is no ``fc``: the network is a dense feature extractor.

Dilation replaces stride per stage (``strides``/``dilations``); DeepLabV2 uses output stride 8:
``strides=(1, 2, 1, 1)``, ``dilations=(1, 1, 2, 4)`` (every block of a dilated stage uses the
stage's dilation, as DeepLab's Caffe model does).

``style="caffe"`` reproduces the MSRA/Caffe ResNet that DeepLab's COCO weights come from: the
stride sits in the first 1x1 convolution of a bottleneck and max pooling rounds up (ceil mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import nn

Style = Literal["pytorch", "caffe"]


@dataclass(frozen=True)
class ResNetSpec:
    """Block type and number of blocks per stage of a ResNet depth."""

    bottleneck: bool
    blocks: tuple[int, int, int, int]


RESNET_SPECS: dict[int, ResNetSpec] = {
    18: ResNetSpec(False, (2, 2, 2, 2)),
    34: ResNetSpec(False, (3, 4, 6, 3)),
    50: ResNetSpec(True, (3, 4, 6, 3)),
    101: ResNetSpec(True, (3, 4, 23, 3)),
    152: ResNetSpec(True, (3, 8, 36, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, style: Style) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (ResNet-50/101/152)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, style: Style) -> None:
        super().__init__()
        out = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(cin, planes, 1, stride=stride_1x1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride_3x3, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return self.relu(h + identity)


class ResNet(nn.Module):
    """A ResNet trunk (no classifier); ``forward`` returns the layer4 feature map."""

    def __init__(
        self,
        depth: int,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        style: Style = "pytorch",
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_SPECS)}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"unknown ResNet style {style!r}")
        spec = RESNET_SPECS[depth]
        block = Bottleneck if spec.bottleneck else BasicBlock
        self.depth = depth
        self.style = style
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=(style == "caffe"))
        cin = 64
        layers = []
        for planes, n, stride, dilation in zip((64, 128, 256, 512), spec.blocks, strides, dilations):
            blocks = []
            for i in range(n):
                blocks.append(block(cin, planes, stride if i == 0 else 1, dilation, style))
                cin = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_channels = cin
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (fan-out) init for convolutions, BN weight 1 and bias 0 (torchvision's defaults)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def dilated_resnet(depth: int, style: Style = "pytorch") -> ResNet:
    """ResNet with output stride 8: dilation 2 in layer3, 4 in layer4 (DeepLabV2)."""
    return ResNet(depth, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), style=style)
