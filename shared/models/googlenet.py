"""GoogLeNet (Szegedy, Liu, Jia, Sermanet, Reed, Anguelov, Erhan, Vanhoucke, Rabinovich 2014, "Going deeper
with convolutions"), the Inception v1 network of Table 1 and Figure 3.

    input (B, 3, 224, 224)
      -> conv 7x7 stride 2, 64 (112x112) -> max 3x3 stride 2 (56x56) -> LRN
      -> conv 1x1, 64 -> conv 3x3, 192 (56x56) -> LRN -> max 3x3 stride 2 (28x28)
      -> inception 3a (256 maps) -> 3b (480) -> max 3x3 stride 2 (14x14)
      -> 4a (512) -> 4b (512) -> 4c (512) -> 4d (528) -> 4e (832) -> max 3x3 stride 2 (7x7)
      -> 5a (832) -> 5b (1024) -> average pool 7x7 (1x1) -> dropout 0.4 -> fc 1024xC (logits)

An inception module concatenates four branches, each convolution followed by ReLU (Figure 2b):
    1x1 (#1x1) | 1x1 (#3x3 reduce) -> 3x3 (#3x3) | 1x1 (#5x5 reduce) -> 5x5 (#5x5) | max 3x3 stride 1 -> 1x1 (pool proj)
The auxiliary classifiers (Section 5), on the outputs of 4a (512 maps) and 4d (528), each:
    average pool 5x5 stride 3 (14x14 -> 4x4) -> conv 1x1, 128 -> ReLU -> fc 2048x1024 -> ReLU -> dropout 0.7
      -> fc 1024xC
Their losses are added to the main loss with weight 0.3 in training (the trainer's business); at test time
they are discarded. With `aux_logits=True` and in training mode, forward returns (logits, aux1, aux2);
otherwise logits only. With `aux_logits=False` (the default) they are not built.

Kept from the paper: Table 1's filter numbers, real 5x5 convolutions, no batch norm, the two LRN layers of
Figure 3, dropout 0.4, the auxiliary classifiers. Our documented choices:
- max pools in ceil mode (Caffe's rounding), which gives Table 1's sizes: 112 -> 56 -> 28 -> 14 -> 7.
- the final 7x7 average pool is a global one (the same at 224; other sizes still give 1x1).
- LRN parameters, which the paper does not state, are those of the BVLC Caffe reproduction: size 5,
  alpha 1e-4 divided by the size (Caffe's and PyTorch's convention), beta 0.75, k 1.
- init: the paper states none, so He init (normal, fan-in) for every convolution and linear layer, biases 0.
Parameters for C=1000: 6,998,552 without the auxiliary classifiers, 13,378,280 with them (their 3,188,840
and 3,190,888; the arithmetic from Table 1 is in tests/test_zoo.py).
torchvision's `googlenet` differs: batch norm after every convolution (no biases, no LRN), a 3x3 instead of a
5x5 convolution in the "5x5" branch, and 6,624,904 parameters without the auxiliary classifiers.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def conv_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """A 'same' convolution (pad kernel_size // 2) and its ReLU, as every convolution in the paper."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2),
        nn.ReLU(inplace=True),
    )


def max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


def lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


class Inception(nn.Module):
    """(B, in_channels, H, W) -> (B, #1x1 + #3x3 + #5x5 + pool proj, H, W)."""

    def __init__(self, in_channels: int, c1: int, r3: int, c3: int, r5: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = conv_relu(in_channels, c1, 1)
        self.branch2 = nn.Sequential(conv_relu(in_channels, r3, 1), conv_relu(r3, c3, 3))
        self.branch3 = nn.Sequential(conv_relu(in_channels, r5, 1), conv_relu(r5, c5, 5))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_relu(in_channels, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


class InceptionAux(nn.Module):
    """(B, in_channels, 14, 14) -> (B, num_classes) logits."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.avgpool = nn.AvgPool2d(5, stride=3)  # 14x14 -> 4x4
        self.conv = conv_relu(in_channels, 128, 1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.avgpool(x)).flatten(1)  # (B, 2048)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class GoogLeNet(nn.Module):
    """(B, in_channels, 224, 224) float -> (B, num_classes) logits, or (logits, aux1, aux2) when training
    with aux_logits."""

    input_size = 224
    head = "fc"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, aux_logits: bool = False) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.conv1 = conv_relu(in_channels, 64, 7, stride=2)  # (B, 64, 112, 112)
        self.maxpool1 = max_pool()  # 56x56
        self.norm1 = lrn()
        self.conv2 = conv_relu(64, 64, 1)
        self.conv3 = conv_relu(64, 192, 3)  # (B, 192, 56, 56)
        self.norm2 = lrn()
        self.maxpool2 = max_pool()  # 28x28
        self.maxpool3 = max_pool()  # between 3b and 4a: 14x14
        self.maxpool4 = max_pool()  # between 4e and 5a: 7x7

        channels = 192
        for name, filters in INCEPTION.items():  # inception3a ... inception5b
            module = Inception(channels, *filters)
            self.add_module(f"inception{name}", module)
            channels = module.out_channels
        if aux_logits:
            self.aux1 = InceptionAux(512, num_classes)  # on 4a
            self.aux2 = InceptionAux(528, num_classes)  # on 4d

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.4)
        self.fc = nn.Linear(1024, num_classes)

        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.norm2(self.conv3(self.conv2(self.norm1(x)))))  # (B, 192, 28, 28)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))  # (B, 480, 14, 14)
        x = self.inception4a(x)  # (B, 512, 14, 14)
        aux1 = self.aux1(x) if self.aux_logits and self.training else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (B, 528, 14, 14)
        aux2 = self.aux2(x) if self.aux_logits and self.training else None
        x = self.maxpool4(self.inception4e(x))  # (B, 832, 7, 7)
        x = self.inception5b(self.inception5a(x))  # (B, 1024, 7, 7)
        logits = self.fc(self.dropout(self.avgpool(x).flatten(1)))
        if aux1 is not None:
            return logits, aux1, aux2
        return logits
