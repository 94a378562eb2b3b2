"""Residual networks (He, Zhang, Ren, Sun 2016, "Deep residual learning for image recognition", CVPR).

ImageNet ResNets, Table 1:

    input (B, 3, 224, 224)
      -> conv 7x7 stride 2, 64 -> BN -> ReLU (112x112) -> max 3x3 stride 2, pad 1 (56x56)
      -> layer1 (56x56) -> layer2 (28x28) -> layer3 (14x14) -> layer4 (7x7), 64-128-256-512 channels
         (times 4 at the output of bottleneck blocks); the first block of layers 2-4 has stride 2
      -> global average pool -> fc C (logits)

    blocks per layer   18: 2-2-2-2, 34: 3-4-6-3 (BasicBlock: 3x3, 3x3)
                       50: 3-4-6-3, 101: 3-4-23-3, 152: 3-8-36-3 (Bottleneck: 1x1, 3x3, 1x1 x4)

Every convolution is followed by batch norm (so it has no bias); a block's last BN is added to the
shortcut before the ReLU. Shortcuts are identities, or projections (1x1 conv with the block's stride, and
BN) where the shape changes: the paper's option B (Section 3.3), which it used for these models.
Our documented choice: the bottleneck's stride-2 sits on its 3x3 convolution rather than on the first 1x1
as in the authors' released models: torchvision's "v1.5", reported slightly more accurate; the parameters
are the same.
Module names follow torchvision's. Parameters for C=1000, as torchvision's: resnet18 11,689,512,
resnet34 21,797,672, resnet50 25,557,032, resnet101 44,549,160, resnet152 60,192,808.

CIFAR-10 ResNets, Section 4.2:

    input (B, 3, 32, 32)
      -> conv 3x3, 16 -> BN -> ReLU
      -> n BasicBlocks of 16 channels (32x32) -> n of 32 (16x16) -> n of 64 (8x8), 6n + 2 weight layers
      -> global average pool -> fc C (logits)

with option A shortcuts: identity, and where a block halves the map and doubles the channels, the input
subsampled with stride 2 and zero maps appended for the new channels (no parameters), so that the
residual nets have exactly the parameters of their plain counterparts. Which end the zeros go is not
stated; ours append them after the input's channels.
Parameters for C=10 (n = (depth - 2) / 6): 97,216 n - 21,926: resnet20 269,722, resnet32 464,154,
resnet44 658,586, resnet56 853,018, resnet110 1,727,962 (the paper's Table 6: 0.27M, 0.46M, 0.66M,
0.85M, 1.7M).

Init (Section 3.4, both): He init (He et al. 2015) for every convolution, normal with fan-out as
torchvision; batch norm weight 1, bias 0; the fc layer keeps PyTorch's default (as torchvision's).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

Shortcut = Literal["A", "B"]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ZeroPadShortcut(nn.Module):
    """Option A: (B, C, H, W) -> (B, C + extra_channels, H / stride, W / stride), the input's pixels at
    stride steps, then zero maps."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))  # pads (W, H, C) from the last dim: C at the end


def make_shortcut(in_channels: int, out_channels: int, stride: int, option: Shortcut) -> nn.Module | None:
    """None (identity) where the block keeps the shape, else option A or B."""
    if stride == 1 and in_channels == out_channels:
        return None
    if option == "A":
        return ZeroPadShortcut(out_channels - in_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """(B, in_channels, H, W) -> (B, channels, H / stride, W / stride): two 3x3 convolutions."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: Shortcut = "B") -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(in_channels, channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """(B, in_channels, H, W) -> (B, 4 channels, H / stride, W / stride): 1x1 reduce, 3x3, 1x1 expand."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, shortcut: Shortcut = "B") -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, stride)  # v1.5: the stride here, not on conv1
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = make_shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


Block = type[BasicBlock] | type[Bottleneck]


def make_layer(
    block: Block, in_channels: int, channels: int, blocks: int, stride: int, shortcut: Shortcut = "B"
) -> nn.Sequential:
    """`blocks` blocks, the first with `stride` (and the shortcut that the change of shape needs)."""
    layers = [block(in_channels, channels, stride, shortcut)]
    layers += [block(channels * block.expansion, channels, 1, shortcut) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_resnet(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


# Table 1: block and blocks per layer for each depth.
IMAGENET_DEPTHS: dict[int, tuple[Block, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(nn.Module):
    """ImageNet ResNet: (B, in_channels, 224, 224) float -> (B, num_classes) logits."""

    input_size = 224
    head = "fc"

    def __init__(self, depth: int = 50, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        if depth not in IMAGENET_DEPTHS:
            raise ValueError(f"ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, got {depth}")
        block, blocks = IMAGENET_DEPTHS[depth]
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = make_layer(block, 64, 64, blocks[0], stride=1)
        self.layer2 = make_layer(block, 64 * block.expansion, 128, blocks[1], stride=2)
        self.layer3 = make_layer(block, 128 * block.expansion, 256, blocks[2], stride=2)
        self.layer4 = make_layer(block, 256 * block.expansion, 512, blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 512 * expansion, 7, 7)
        return self.fc(self.avgpool(x).flatten(1))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2: (B, in_channels, 32, 32) float -> (B, num_classes) logits."""

    input_size = 32
    head = "fc"

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(BasicBlock, 16, 16, n, stride=1, shortcut="A")  # (B, 16, 32, 32)
        self.layer2 = make_layer(BasicBlock, 16, 32, n, stride=2, shortcut="A")  # (B, 32, 16, 16)
        self.layer3 = make_layer(BasicBlock, 32, 64, n, stride=2, shortcut="A")  # (B, 64, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))
