"""The benchmark model zoo: CIFAR-style ResNet-18/34/50, VGG-16 (BN) and MobileNet V1/V2, sized for
1x28x28 (Fashion-MNIST) or 3x32x32 (CIFAR-10) inputs, with a width multiplier for quick runs.

CIFAR-style means a 3x3 stride-1 stem and no stem pooling (He et al. 2016's CIFAR recipe), the
layout the published Fashion-MNIST/CIFAR numbers use; at width 1 the parameter counts are the
well-known ones (ResNet-18 11.2M, VGG-16 14.7M, MobileNetV2 2.2M with a 10-class head)."""

from __future__ import annotations

from torch import nn

from tensorfold.bench.models import BasicBlock, Bottleneck, ResNet
from tensorfold.bench.models import channels as _w


def resnet18(num_classes=10, in_channels=1, width=1.0):
    return ResNet((2, 2, 2, 2), BasicBlock, num_classes, in_channels, width, stem="cifar")


def resnet34(num_classes=10, in_channels=1, width=1.0):
    return ResNet((3, 4, 6, 3), BasicBlock, num_classes, in_channels, width, stem="cifar")


def resnet50(num_classes=10, in_channels=1, width=1.0):
    return ResNet((3, 4, 6, 3), Bottleneck, num_classes, in_channels, width, stem="cifar")


_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def vgg16(num_classes=10, in_channels=1, width=1.0):
    """VGG-16 with BatchNorm and the CIFAR head (one Linear); four pools, so 28x28 ends at 1x1."""
    layers, c_in = [], in_channels
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            c = _w(v, width)
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))


class InvertedResidual(nn.Module):
    def __init__(self, c_in, c_out, stride, expand):
        super().__init__()
        hidden = c_in * expand
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(num_classes=10, in_channels=1, width=1.0):
    """MobileNetV2 (Sandler et al. 2018) with CIFAR strides: stem and first stage at stride 1."""
    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    c = _w(32, width)
    layers = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(inplace=True)]
    for t, ch, n, s in cfg:
        out = _w(ch, width)
        for i in range(n):
            layers.append(InvertedResidual(c, out, s if i == 0 else 1, t))
            c = out
    last = _w(1280, max(width, 1.0))
    layers += [
        nn.Conv2d(c, last, 1, bias=False),
        nn.BatchNorm2d(last),
        nn.ReLU6(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(last, num_classes),
    ]
    return nn.Sequential(*layers)


def mobilenet_v1(num_classes=10, in_channels=1, width=1.0):
    """MobileNetV1 (Howard et al. 2017): depthwise-separable blocks, CIFAR strides."""
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    c = _w(32, width)
    layers = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
    for ch, s in cfg:
        out = _w(ch, width)
        layers += [
            nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, out, 1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


ZOO = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "mobilenetv2": mobilenet_v2,
    "mobilenetv1": mobilenet_v1,
}


def build(name: str, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> nn.Module:
    from tensorfold.errors import TensorfoldError

    if name not in ZOO:
        raise TensorfoldError(f"unknown model '{name}' (zoo: {', '.join(ZOO)})")
    return ZOO[name](num_classes=num_classes, in_channels=in_channels, width=width)
