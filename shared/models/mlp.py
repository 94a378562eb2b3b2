"""Multilayer perceptrons: for vector observations (CartPole's 4 floats, the Atari console's 128 RAM bytes)
and, in the classification zoo, for images.

    MLP:          (B, in_features) -> hidden layers with ReLU -> (B, out_features)
    MLPQNetwork:  (B, in_features) -> Q-values (B, num_actions); dueling splits the last hidden layer's
                  output into a value and an advantage stream, Q = V + A - mean(A) (Wang et al. 2016)
    MLPClassifier: (B, C, 28, 28) images -> (B, num_classes) logits, with optional dropout: the zoo's
                  mlp_1200_1200, mlp_800_800 and lenet_300_100

MLP scales uint8 input (RAM bytes) to [0, 1] by 1/255 and uses float input as it is. PyTorch's default init.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class MLPClassifier(nn.Module):
    """A fully connected image classifier: (B, in_channels, 28, 28) float -> flattened -> ReLU layers -> (B, C) logits.

    The zoo's MLPs, by name (shared/models/__init__.py):
        mlp_1200_1200:  784-1200-1200-10, dropout 0.2 on the input and 0.5 on each hidden layer: the teacher of
                        Hinton, Vinyals, Dean 2015 (Section 3), regularized as in Hinton et al. 2012 and
                        Srivastava et al. 2014 (their MNIST nets keep inputs with p = 0.8, hidden units with 0.5).
                        Not kept: their max-norm constraint on each unit's incoming weights.
        mlp_800_800:    784-800-800-10 without regularization: the same paper's small net and distilled student.
        lenet_300_100:  784-300-100-10 (LeCun et al. 1998's LeNet-300-100, as pruned by Han et al. 2015).
    Dropout is applied in `forward` (not as modules), so every variant has the same state_dict keys
    (`hidden.0`, `hidden.1`, ..., `output`). PyTorch's default init.
    """

    input_size = 28  # MNIST's digits unpadded; the 8x8 digits set reaches it with data.pad=10
    fixed_input = True  # classify checks data.pad against it
    head = "output"

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        hidden: Sequence[int] = (1200, 1200),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        sizes = [in_channels * self.input_size**2, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.output = nn.Linear(sizes[-1], num_classes)
        self.in_features = sizes[0]
        self.dropout = dropout
        self.input_dropout = input_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:].numel() != self.in_features:
            raise ValueError(
                f"this MLP reads {self.in_features // self.input_size**2}x{self.input_size}x{self.input_size} "
                f"images, got {tuple(x.shape[1:])}; the 8x8 digits set needs data.pad=10"
            )
        x = F.dropout(x.flatten(1), self.input_dropout, self.training)  # (B, C * 28 * 28)
        for layer in self.hidden:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
        return self.output(x)
