"""AlexNet (Krizhevsky, Sutskever, Hinton 2012, "ImageNet classification with deep convolutional neural
networks") and ZFNet (Zeiler, Fergus 2013, "Visualizing and understanding convolutional networks").

AlexNet, Section 3 and Figure 2; the two GPU towers are one network whose conv2, conv4 and conv5 are
grouped convolutions (groups=2), which is exactly the paper's connectivity: those layers read only the
maps on their own GPU, conv3 and the fully connected layers read both.

    input (B, 3, 227, 227)
      -> conv1 96 11x11 stride 4 (55x55) -> ReLU -> LRN -> max 3x3 stride 2 (27x27)
      -> conv2 256 5x5 pad 2, groups 2 (27x27) -> ReLU -> LRN -> max 3x3 stride 2 (13x13)
      -> conv3 384 3x3 pad 1 (13x13) -> ReLU
      -> conv4 384 3x3 pad 1, groups 2 (13x13) -> ReLU
      -> conv5 256 3x3 pad 1, groups 2 (13x13) -> ReLU -> max 3x3 stride 2 (6x6)
      -> dropout 0.5 -> fc6 9216x4096 -> ReLU -> dropout 0.5 -> fc7 4096x4096 -> ReLU -> fc8 4096xC (logits)

The paper says 224x224; 227 is the size its 11x11 stride-4 arithmetic needs ((227 - 11) / 4 + 1 = 55).
Parameters for C=1000 (weights + biases):
    conv1 96*3*121 + 96 = 34,944          conv2 256*48*25 + 256 = 307,456     conv3 384*256*9 + 384 = 885,120
    conv4 384*192*9 + 384 = 663,936       conv5 256*192*9 + 256 = 442,624
    fc6 9216*4096 + 4096 = 37,752,832     fc7 4096*4096 + 4096 = 16,781,312   fc8 4096*1000 + 1000 = 4,097,000
    total 60,965,224
torchvision's `alexnet` is a different model: the single-tower variant of Krizhevsky's 2014 "One weird
trick for parallelizing convolutional neural networks" (64-192-384-256-256 maps, no LRN, no groups),
61,100,840 parameters.

Kept from the paper: everything above, including local response normalisation (Section 3.3:
b = a / (k + alpha * sum of a^2 over n adjacent maps)^beta with k=2, n=5, alpha=1e-4, beta=0.75, the sum
running over all the layer's maps) and overlapping pooling (Section 3.4). Init (Section 5): weights
N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fully connected layers (to give the ReLUs
positive inputs early on), 0 in the others.

ZFNet, Section 3 and Figure 3: AlexNet with a smaller, denser first layer (Section 4.1 found AlexNet's
11x11 stride-4 filters left aliasing and dead filters), and dense instead of grouped conv2, conv4, conv5
since it was trained on one GPU.

    input (B, 3, 224, 224)
      -> conv1 96 7x7 stride 2, pad 1 (110x110) -> ReLU -> max 3x3 stride 2 (55x55) -> LRN
      -> conv2 256 5x5 stride 2 (26x26) -> ReLU -> max 3x3 stride 2 (13x13) -> LRN
      -> conv3 384 3x3 pad 1 -> ReLU -> conv4 384 3x3 pad 1 -> ReLU -> conv5 256 3x3 pad 1 -> ReLU (13x13)
      -> max 3x3 stride 2 (6x6) -> the classifier of AlexNet above

Our documented choices for ZFNet, where Figure 3 gives the sizes but not how they were reached: padding 1
on conv1 ((224 + 2 - 7) / 2 + 1 = 110) and ceil-mode pooling (110 -> 55 and 26 -> 13; floor gives 54 and
12), as in Caffe; the contrast normalisation, which the paper does not parameterise, is AlexNet's LRN.
Parameters for C=1000: conv1 96*3*49 + 96 = 14,208, conv2 256*96*25 + 256 = 614,656, conv3 885,120,
conv4 384*384*9 + 384 = 1,327,488, conv5 256*384*9 + 256 = 884,992, fc6-fc8 as AlexNet 58,631,144;
total 62,357,608. Init (Section 3): weights 1e-2 (read as the standard deviation of a zero-mean normal,
as in AlexNet), biases 0. The paper's renormalisation of conv filters whose RMS exceeds 0.1 is a step of
training, not of the model, and is not here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn


def paper_lrn() -> nn.LocalResponseNorm:
    """AlexNet's Section 3.3 normalisation. PyTorch (like Caffe) divides alpha by the window size n, the
    paper does not, so the paper's alpha = 1e-4 is passed as n * 1e-4."""
    return nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)


def max_pool(ceil_mode: bool = False) -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=ceil_mode)  # overlapping: 3x3 windows, stride 2


class AlexNet(nn.Module):
    """(B, in_channels, 227, 227) float -> (B, num_classes) logits."""

    input_size = 227
    head = "classifier.fc8"

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.features = self.make_features(in_channels)  # (B, 256, 6, 6)
        # Dropout on the inputs of fc6 and fc7, the two hidden layers (Section 4.2).
        self.classifier = nn.Sequential(
            OrderedDict(
                drop6=nn.Dropout(0.5),
                fc6=nn.Linear(256 * 6 * 6, 4096),
                relu6=nn.ReLU(inplace=True),
                drop7=nn.Dropout(0.5),
                fc7=nn.Linear(4096, 4096),
                relu7=nn.ReLU(inplace=True),
                fc8=nn.Linear(4096, num_classes),
            )
        )
        self.init_weights()

    @staticmethod
    def make_features(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 96, 11, stride=4),
                relu1=nn.ReLU(inplace=True),
                norm1=paper_lrn(),
                pool1=max_pool(),
                conv2=nn.Conv2d(96, 256, 5, padding=2, groups=2),
                relu2=nn.ReLU(inplace=True),
                norm2=paper_lrn(),
                pool2=max_pool(),
                conv3=nn.Conv2d(256, 384, 3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, 3, padding=1, groups=2),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, 3, padding=1, groups=2),
                relu5=nn.ReLU(inplace=True),
                pool5=max_pool(),
            )
        )

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        f, c = self.features, self.classifier
        for layer in (f.conv2, f.conv4, f.conv5, c.fc6, c.fc7):
            nn.init.ones_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fc6 is sized for the 6x6 maps of the native input; say so rather than fail inside a matmul.
        if x.shape[-2:] != (self.input_size, self.input_size):
            side = self.input_size
            raise ValueError(f"{type(self).__name__} reads {side}x{side} images, got {tuple(x.shape[-2:])}")
        return self.classifier(self.features(x).flatten(1))


class ZFNet(AlexNet):
    """(B, in_channels, 224, 224) float -> (B, num_classes) logits: AlexNet's classifier on Figure 3's layers."""

    input_size = 224

    @staticmethod
    def make_features(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 96, 7, stride=2, padding=1),  # (B, 96, 110, 110)
                relu1=nn.ReLU(inplace=True),
                pool1=max_pool(ceil_mode=True),  # (B, 96, 55, 55)
                norm1=paper_lrn(),
                conv2=nn.Conv2d(96, 256, 5, stride=2),  # (B, 256, 26, 26)
                relu2=nn.ReLU(inplace=True),
                pool2=max_pool(ceil_mode=True),  # (B, 256, 13, 13)
                norm2=paper_lrn(),
                conv3=nn.Conv2d(256, 384, 3, padding=1),
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, 3, padding=1),
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, 3, padding=1),
                relu5=nn.ReLU(inplace=True),
                pool5=max_pool(ceil_mode=True),  # (B, 256, 6, 6)
            )
        )

    def init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
