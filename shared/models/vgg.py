"""VGG (Simonyan, Zisserman 2014, "Very deep convolutional networks for large-scale image recognition").

Table 1's configurations A, B, D and E (11, 13, 16 and 19 weight layers): stacks of 3x3 convolutions
(stride 1, pad 1, so each keeps the map size) with ReLU, five 2x2 stride-2 max pools, and three fully
connected layers. Config D (VGG-16):

    input (B, 3, 224, 224)
      -> [conv3-64] x2 -> pool (112x112) -> [conv3-128] x2 -> pool (56x56)
      -> [conv3-256] x3 -> pool (28x28) -> [conv3-512] x3 -> pool (14x14) -> [conv3-512] x3 -> pool (7x7)
      -> adaptive average pool to 7x7 (the identity at 224) -> flatten (25,088)
      -> fc 4096 -> ReLU -> dropout 0.5 -> fc 4096 -> ReLU -> dropout 0.5 -> fc C (logits)

A has 1+1+2+2+2 convolutions per block, B 2+2+2+2+2, D 2+2+3+3+3, E 2+2+4+4+4. Config C (D with 1x1
convolutions in the last three blocks) and A-LRN, which the paper found no better, are not here.

Kept from the paper: the configurations, the classifier, dropout 0.5 on the first two fully connected
layers. Our documented choices, both torchvision's so that the parameter counts and module names match
its models: the adaptive average pool to 7x7 before the classifier (at 224 it does nothing; at other
sizes it lets the classifier's 25,088 inputs stay, instead of the paper's test-time conversion of the
fully connected layers to convolutions), and the `_bn` variants, which put batch norm (Ioffe & Szegedy
2015, after the paper) between each convolution and its ReLU.
Parameters for C=1000: vgg11 132,863,336, vgg13 133,047,848, vgg16 138,357,544, vgg19 143,667,240; batch
norm adds 2 per conv channel: 2 * (64+128+256*2+512*4) = 5,504 for A, 5,888 for B, 8,448 for D,
11,008 for E.

Init (Section 3.1): the paper trained A from N(0, 0.01) and initialised the deeper nets from A, then
notes that Glorot & Bengio's (2010) random init trains them without pre-training; that is the init here
(Xavier uniform weights, zero biases; batch norm weight 1, bias 0).
"""

from __future__ import annotations

import torch
import torch.nn as nn

POOL = "M"
# Table 1's A, B, D, E by weight layers (convs + 3 fc): output channels of each 3x3 conv, POOL a 2x2 max pool.
CONFIGS: dict[int, list[int | str]] = {
    11: [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    13: [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    16: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
    19: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL],
}


class VGG(nn.Module):
    """(B, in_channels, 224, 224) float -> (B, num_classes) logits; `depth` picks the configuration.

    Its parameter names and shapes are torchvision's (`features.0.weight`, ..., `classifier.6.bias`), so a
    state_dict of torchvision's ImageNet weights loads into it as it is.
    """

    input_size = 224
    head = "classifier.6"

    def __init__(
        self, depth: int = 16, batch_norm: bool = False, num_classes: int = 1000, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.features = make_features(depth, batch_norm, in_channels)  # (B, 512, 7, 7) at 224
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def make_features(depth: int, batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    """The convolutional part of configuration `depth`, (B, in_channels, H, W) -> (B, 512, H/32, W/32), with
    PyTorch's default init (`init_weights` gives the paper's); alone, it is what style transfer reads."""
    if depth not in CONFIGS:
        raise ValueError(f"VGG depth must be one of {sorted(CONFIGS)}, got {depth}")
    layers: list[nn.Module] = []
    channels = in_channels
    for item in CONFIGS[depth]:
        if item == POOL:
            layers.append(nn.MaxPool2d(2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """Glorot & Bengio's init (Xavier uniform weights, zero biases; batch norm weight 1, bias 0) in place."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
