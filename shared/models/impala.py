"""The IMPALA ResNet encoder (Espeholt et al. 2018, "IMPALA: Scalable distributed deep-RL with importance
weighted actor-learner architectures", Figure 3, the "large architecture").

    input (B, C, H, W), (4, 84, 84) by default
      -> 3 stacks, of 16, 32 and 32 channels, each:
           conv 3x3 stride 1 -> max pool 3x3 stride 2 padding 1 (halves H and W, rounding up)
           -> 2 residual blocks: x + conv3x3(ReLU(conv3x3(ReLU(x))))
         84x84 -> 42x42 -> 21x21 -> 11x11
      -> ReLU -> flatten (32 * 11 * 11 = 3,872) -> linear 256 -> ReLU       (B, 256)

Kept from the paper: the three stacks, their widths, pooling and residual blocks, and the 256-unit layer.
The LSTM the paper puts on top (with the last action and clipped reward as extra inputs) belongs to the
agent, not to this encoder; feed-forward agents such as Procgen's baselines (Cobbe et al. 2019) use the
encoder as it is here. Convolutions are zero-padded to keep their size ("same"); the max pool pads by 1
on every side, which gives the same output size as TensorFlow's "SAME" pooling of the reference code
(that pads only after), with the windows shifted by one pixel on even-sized inputs.

Other input sizes: the flatten size is computed from `input_shape`, each pool mapping n to ceil(n / 2),
e.g. 64x64 (Procgen) -> 32 * 8 * 8 = 2,048 features.

Parameters, for C = 4 and 84x84: stack 1 4*16*9 + 16 + 4 * (16*16*9 + 16) = 592 + 9,280 = 9,872;
stack 2 16*32*9 + 32 + 4 * (32*32*9 + 32) = 4,640 + 36,992 = 41,632; stack 3 9,248 + 36,992 = 46,240;
fc 3872*256 + 256 = 991,488; in all 1,089,232.

Init: that of the paper's reference code (deepmind/scalable_agent, Sonnet 1's default): weights from a
normal of standard deviation 1/sqrt(fan_in) truncated at two standard deviations, biases zero.

Pixels: uint8 input is scaled to [0, 1] by the module (`x.float() / 255`, see nature_cnn.to_float_pixels);
float input is taken as already scaled to [0, 1] and is used unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.models.nature_cnn import to_float_pixels

STACK_CHANNELS = (16, 32, 32)


class ResidualBlock(nn.Module):
    """x + conv(ReLU(conv(ReLU(x)))), 3x3 convolutions keeping (B, channels, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in-place: the ReLU must leave x intact for the skip connection.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ConvStack(nn.Module):
    """conv 3x3 -> max pool 3x3 stride 2 padding 1 -> 2 residual blocks.

    (B, in_channels, H, W) -> (B, out_channels, ceil(H / 2), ceil(W / 2)).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.blocks = nn.Sequential(ResidualBlock(out_channels), ResidualBlock(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.max_pool2d(self.conv(x), 3, stride=2, padding=1))


class ImpalaEncoder(nn.Module):
    """(B, *input_shape) uint8 0..255 or float 0..1 -> (B, 256) float ReLU features; `out_features` = 256."""

    out_features = 256

    def __init__(self, input_shape: tuple[int, int, int] = (4, 84, 84)) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        channels, height, width = self.input_shape
        widths = (channels, *STACK_CHANNELS)
        self.stacks = nn.Sequential(*(ConvStack(c_in, c_out) for c_in, c_out in zip(widths, widths[1:])))
        for _ in STACK_CHANNELS:
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        self.fc = nn.Linear(STACK_CHANNELS[-1] * height * width, self.out_features)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                std = 1 / math.sqrt(module.weight[0].numel())  # fan_in: in_channels * k * k, or in_features
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"this IMPALA encoder was built for {self.input_shape} inputs, got {tuple(x.shape[1:])}")
        features = F.relu(self.stacks(to_float_pixels(x))).flatten(1)  # (B, 32 * H/8 * W/8)
        return F.relu(self.fc(features))
