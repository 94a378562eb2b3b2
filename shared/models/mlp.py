"""Multilayer perceptrons for vector observations: CartPole's 4 floats, the Atari console's 128 RAM bytes.

    MLP:          (B, in_features) -> hidden layers with ReLU -> (B, out_features)
    MLPQNetwork:  (B, in_features) -> Q-values (B, num_actions); dueling splits the last hidden layer's
                  output into a value and an advantage stream, Q = V + A - mean(A) (Wang et al. 2016)

uint8 input (RAM bytes) is scaled to [0, 1] by 1/255; float input is used as it is. PyTorch's default init.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from shared.models.nature_cnn import to_float_pixels


class MLP(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (120, 84)) -> None:
        super().__init__()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(sizes[-1], out_features)
        self.hidden_features = sizes[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = to_float_pixels(x).float()
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class MLPQNetwork(nn.Module):
    def __init__(
        self, in_features: int, num_actions: int, hidden: Sequence[int] = (120, 84), dueling: bool = False
    ) -> None:
        super().__init__()
        self.dueling = dueling
        self.mlp = MLP(in_features, num_actions, hidden)
        if dueling:
            self.value = nn.Linear(self.mlp.hidden_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.mlp(x)
        h = self.mlp.features(x)
        advantage = self.mlp.out(h)
        return self.value(h) + advantage - advantage.mean(1, keepdim=True)
