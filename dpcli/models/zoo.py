"""Classifiers with the feature extractor and the last linear layer kept apart.

Influence (Yang et al., ICLR 2023, section 6.1) is computed for the last linear
layer only, so every model is ``head(features(x))`` with ``head`` an
``nn.Linear(feature_dim, num_classes)``.

Architectures (:data:`ARCHS`):

``convnet``
    ``depth`` blocks of conv3x3(``width``, no bias) -> BatchNorm -> ReLU ->
    AvgPool2 (pooling skipped once the spatial size is 1), then flatten -> head.
    ``feature_dim = width * s**2`` where ``s`` is the final spatial size
    (CIFAR 32x32, depth 3, width 32 -> 4x4 -> 512; digits 8x8, depth 3 -> 1x1 -> width).
    Square images are assumed (``image_size`` is the side).
``resnet18`` / ``resnet50``
    CIFAR-style ResNets (3x3 stride-1 stem, no max-pool), BasicBlock [2,2,2,2] /
    Bottleneck [3,4,6,3] stages of 64/128/256/512 planes with strides 1,2,2,2,
    global average pooling -> head (feature_dim 512 / 2048).  ``width`` and
    ``depth`` are ignored; any image size works.

Initialization is PyTorch's default, so a model is reproducible given
``torch.manual_seed``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpcli.errors import DpcliError

__all__ = ["ARCHS", "Classifier", "ConvNet", "ResNet", "build_model", "build_builtin"]

ARCHS = ("convnet", "resnet18", "resnet50")


class Classifier(nn.Module):
    """``forward(x) == head(features(x))``; ``features`` gives ``(N, feature_dim)``."""

    head: nn.Linear
    arch: str
    feature_dim: int

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class ConvNet(Classifier):
    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 32, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if size > 1:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            channels = width
        self.body = nn.Sequential(*layers)
        self.arch = "convnet"
        self.feature_dim = width * size * size
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.body(x), 1)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """A residual block's skip path: identity, or a strided 1x1 projection where the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNet(Classifier):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: list[int],
        num_classes: int,
        in_channels: int,
        arch: str,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._make_layer(block, 64, blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, blocks[3], 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.arch = arch
        self.feature_dim = 512 * block.expansion
        self.head = nn.Linear(self.feature_dim, num_classes)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out = self.stem(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return torch.flatten(self.pool(out), 1)


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    width: int = 32,
    depth: int = 3,
    weights: str | None = None,
    head_module: str | None = None,
) -> Classifier:
    """Build a classifier: a builtin name, or ``torchvision:NAME`` / ``timm:NAME`` (see dpcli.models.base)."""
    from dpcli.models.base import ModelSpec, build

    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise DpcliError(
            f"Invalid model shape (num_classes={num_classes}, in_channels={in_channels}, image_size={image_size})."
        )
    return build(arch, ModelSpec(num_classes, in_channels, image_size, width, depth, weights, head_module))


def build_builtin(
    arch: str, num_classes: int, in_channels: int, image_size: int, width: int = 32, depth: int = 3
) -> Classifier:
    """Build a fresh builtin classifier (see the module docstring)."""
    key = arch.strip().lower()
    if key not in ARCHS:
        raise DpcliError(f"Unknown architecture {arch!r}; valid ones are: {', '.join(ARCHS)}.")
    if num_classes < 1 or in_channels < 1 or image_size < 1:
        raise DpcliError(
            f"Invalid model shape (num_classes={num_classes}, in_channels={in_channels}, image_size={image_size})."
        )
    if key == "convnet":
        if width < 1 or depth < 1:
            raise DpcliError(f"convnet needs width >= 1 and depth >= 1, got width={width}, depth={depth}.")
        return ConvNet(num_classes, in_channels, image_size, width=width, depth=depth)
    if key == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, "resnet18")
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_channels, "resnet50")
