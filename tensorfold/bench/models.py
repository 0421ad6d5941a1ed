"""Model definitions for benchmarks (torch). ResNet-50 here is torchvision's layout, written out so
no torchvision is needed: bottleneck blocks [3, 4, 6, 3], 25.6M parameters with a 1000-class head."""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def channels(c: int, width: float, divisor: int = 8) -> int:
    """c scaled by a width multiplier, rounded to a multiple of `divisor` (c itself at width 1)."""
    return max(divisor, int(c * width + divisor / 2) // divisor * divisor)


class ResNet(nn.Module):
    """ResNet with BasicBlock or Bottleneck blocks. stem="imagenet": 7x7 stride-2 conv and a max pool
    (torchvision's layout); stem="cifar": one 3x3 stride-1 conv (He et al. 2016's CIFAR recipe)."""

    def __init__(
        self,
        blocks=(3, 4, 6, 3),
        block=None,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        stem: str = "imagenet",
    ):
        super().__init__()
        block = block or Bottleneck
        c = channels(64, width)
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
            )
        layers, c_in = [], c
        for i, n in enumerate(blocks):
            planes = channels(64 * 2**i, width)
            for j in range(n):
                layers.append(block(c_in, planes, stride=2 if (j == 0 and i > 0) else 1))
                c_in = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.head(self.layers(self.stem(x)))


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), Bottleneck, num_classes)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != width:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet18(num_classes: int = 1000) -> ResNet:
    """torchvision's ResNet-18 layout (11.7M parameters with a 1000-class head)."""
    return ResNet((2, 2, 2, 2), BasicBlock, num_classes)
