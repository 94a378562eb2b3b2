"""SqueezeNet (Iandola, Han, Moskewicz, Ashraf, Dally, Keutzer 2016, "SqueezeNet: AlexNet-level accuracy with
50x fewer parameters and <0.5MB model size"), version 1.0 of the paper and version 1.1 of its authors'
repository (github.com/DeepScale/SqueezeNet: the same accuracy with 2.4x less computation).

A Fire module squeezes then expands, each convolution followed by ReLU:
    (B, in, H, W) -> squeeze 1x1 (s) -> [expand 1x1 (e1) | expand 3x3 pad 1 (e3)] concatenated -> (B, e1 + e3, H, W)

    1.0 (Table 1 and Figure 2, left):
    input (B, 3, 224, 224) -> conv1 7x7 stride 2, 96 (109x109) -> max 3x3 stride 2 (54x54)
      -> fire2 (16, 64, 64) -> fire3 (16, 64, 64) -> fire4 (32, 128, 128) -> max (27x27)
      -> fire5 (32, 128, 128) -> fire6 (48, 192, 192) -> fire7 (48, 192, 192) -> fire8 (64, 256, 256) -> max (13x13)
      -> fire9 (64, 256, 256) -> classifier
    1.1: conv1 3x3 stride 2, 64 (111x111) -> max (55x55) -> fire2, fire3 -> max (27x27) -> fire4, fire5 -> max
      (13x13) -> fire6, fire7, fire8, fire9 -> classifier (same Fire sizes; the pools moved earlier)
    classifier: dropout 0.5 -> conv10 1x1, C (13x13) -> ReLU -> global average pool -> (B, C) logits

Kept from the paper: the Fire sizes, the 3x3 stride-2 max pools, no fully connected layer, dropout 0.5
after fire9, and ceil-mode pooling (Caffe's rounding, which the authors' model used). Module names and
the parameter counts are torchvision's. Our documented choice: a 224 input, as torchvision. The paper's
Table 1 lists 224x224 but 111x111 after conv1, which is what the 227 crop of the authors' Caffe
train_val.prototxt gives ((227 - 7) / 2 + 1 = 111); the global pool takes either.
Parameters for C=1000: squeezenet1_0 1,248,424, squeezenet1_1 1,235,496.
Init as torchvision: conv10 N(0, 0.01), as the authors' (so the initial logits are near zero); every other
convolution He uniform (kaiming_uniform) where the authors' Caffe model used Xavier; biases 0.
"""

from __future__ import annotations

import torch
import torch.nn as nn


class Fire(nn.Module):
    """(B, in_channels, H, W) -> (B, expand1x1 + expand3x3, H, W)."""

    def __init__(self, in_channels: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_channels, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            [self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))], dim=1
        )


def max_pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


class SqueezeNet(nn.Module):
    """(B, in_channels, 224, 224) float -> (B, num_classes) logits; `version` "1_0" or "1_1"."""

    input_size = 224
    head = "classifier.1"

    def __init__(self, version: str = "1_0", num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        if version == "1_0":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 96, 7, stride=2),
                nn.ReLU(inplace=True),
                max_pool(),
                Fire(96, 16, 64, 64),
                Fire(128, 16, 64, 64),
                Fire(128, 32, 128, 128),
                max_pool(),
                Fire(256, 32, 128, 128),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                max_pool(),
                Fire(512, 64, 256, 256),
            )
        elif version == "1_1":
            self.features = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, stride=2),
                nn.ReLU(inplace=True),
                max_pool(),
                Fire(64, 16, 64, 64),
                Fire(128, 16, 64, 64),
                max_pool(),
                Fire(128, 32, 128, 128),
                Fire(256, 32, 128, 128),
                max_pool(),
                Fire(256, 48, 192, 192),
                Fire(384, 48, 192, 192),
                Fire(384, 64, 256, 256),
                Fire(512, 64, 256, 256),
            )
        else:
            raise ValueError(f"SqueezeNet version must be '1_0' or '1_1', got {version!r}")
        final_conv = nn.Conv2d(512, num_classes, 1)  # conv10
        self.classifier = nn.Sequential(nn.Dropout(0.5), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if module is final_conv:
                    nn.init.normal_(module.weight, std=0.01)
                else:
                    nn.init.kaiming_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x)).flatten(1)  # (B, C, 1, 1) -> (B, C)
