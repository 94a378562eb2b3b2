"""The Nature DQN network (Mnih et al. 2015, "Human-level control through deep reinforcement learning"),
with the dueling head of Wang et al. 2016 ("Dueling network architectures for deep reinforcement learning").

    input (B, 4, 84, 84): the last 4 preprocessed frames
      -> conv 8x8 stride 4, 32 maps (20x20) -> ReLU
      -> conv 4x4 stride 2, 64 maps (9x9) -> ReLU
      -> conv 3x3 stride 1, 64 maps (7x7) -> ReLU -> flatten 3136
      -> linear 512 -> ReLU                                    NatureEncoder, (B, 512)
      -> linear num_actions                                    NatureQNetwork, Q-values (B, num_actions)

Kept from the paper: every layer size, the 84x84 input and the 4-frame stack (any `in_channels` is
accepted, e.g. 1 for a single frame or 12 for 4 RGB frames). Parameters, from `in_channels` = 4:
conv1 4*32*8*8 + 32 = 8,224; conv2 32*64*4*4 + 64 = 32,832; conv3 64*64*3*3 + 64 = 36,928;
fc 3136*512 + 512 = 1,606,144; the encoder 1,684,128, and a linear Q head 512 * A + A more.

Dueling (Wang et al. 2016, section 4.2, Atari): the same three convolutions, then two streams, each a
fully connected layer of 512 units, the value stream ending in 1 output and the advantage stream in A,
combined as Q = V + A - mean(A) (their equation 9). The streams branch at the convolutions' 3136
features, not after a shared 512 layer, as in the paper: their two 3136 -> 512 layers are held as one
NatureEncoder with `out_features` = 1024 whose halves feed V and A. That is the same function, the same
parameter count (3136*1024 + 1024 = 2 * (3136*512 + 512)) and, since the default init depends only on
the fan-in of 3136, the same initial distribution as two separate layers. Left to the trainer: the
paper's gradient clipping at norm 10, and its rescaling by 1/sqrt(2) of the gradient entering the last
convolution (a tensor hook on the output of `encoder.convs` does it), which most reimplementations omit.

Init: the PyTorch default, weights and biases uniform in +-1/sqrt(fan_in). The paper names no init;
its published code is Torch7, whose default for these layers is that same uniform, and CleanRL's DQN keeps
the PyTorch default. (Dopamine's agents use Glorot or variance-scaling initialisers; we do not.)

Pixels: uint8 input is scaled to [0, 1] by the module (`x.float() / 255`), so replay buffers can store
and hand over uint8 frames; float input is taken as already scaled to [0, 1] and is used unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CONV_FEATURES = 64 * 7 * 7  # 3136, the flattened 7x7 maps of conv3 for an 84x84 input


def to_float_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 x / 255 in [0, 1]; a floating-point tensor is returned unchanged."""
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise TypeError(f"pixels must be uint8 (0..255) or floating point (0..1), got {x.dtype}")
    return x


class NatureEncoder(nn.Module):
    """The Nature DQN torso: (B, in_channels, 84, 84) uint8 0..255 or float 0..1 -> (B, out_features) float.

    The output is ReLU features, 512 of them unless `out_features` says otherwise (the dueling Q-network
    asks for 1024, its two streams side by side).
    """

    def __init__(self, in_channels: int = 4, out_features: int = 512) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(CONV_FEATURES, out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (84, 84):
            raise ValueError(f"the Nature CNN reads 84x84 frames, got {tuple(x.shape[-2:])}")
        return F.relu(self.fc(self.convs(to_float_pixels(x))))


class NatureQNetwork(nn.Module):
    """(B, in_channels, 84, 84) uint8 0..255 or float 0..1 -> Q-values (B, num_actions) float.

    `dueling=False`: the Nature DQN, a linear Q head on NatureEncoder's 512 features.
    `dueling=True`: Wang et al.'s streams, V (B, 1) and A (B, num_actions) from 512 units each,
    combined as Q = V + A - mean over actions of A.
    """

    def __init__(self, num_actions: int, in_channels: int = 4, dueling: bool = False) -> None:
        super().__init__()
        self.num_actions = num_actions
        self.dueling = dueling
        if dueling:
            self.encoder = NatureEncoder(in_channels, out_features=2 * 512)
            self.value = nn.Linear(512, 1)
            self.advantage = nn.Linear(512, num_actions)
        else:
            self.encoder = NatureEncoder(in_channels)
            self.q = nn.Linear(512, num_actions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        if not self.dueling:
            return self.q(features)
        value_hidden, advantage_hidden = features.split(512, dim=1)  # each (B, 512), one stream apiece
        value = self.value(value_hidden)  # (B, 1)
        advantage = self.advantage(advantage_hidden)  # (B, num_actions)
        return value + advantage - advantage.mean(dim=1, keepdim=True)
