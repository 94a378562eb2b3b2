"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document recognition").

    input (B, 1, 32, 32) -> C1 conv 5x5, 6 maps (28x28) -> S2 2x2 (14x14)
      -> C3 conv 5x5, 16 maps (10x10), each reading only the S2 maps of the paper's Table I -> S4 2x2 (5x5)
      -> C5 conv 5x5, 120 maps (1x1) -> F6 linear 84 -> output linear 10 (logits)

Kept from the paper: the layer sizes, the 32x32 input (MNIST's 28x28 digits padded by 2), and C3's sparse
connection table, which the paper used to break symmetry. C1, C3, C5 and F6 have exactly the paper's
156 + 1,516 + 48,120 + 10,164 trainable parameters.

Our documented choices, the modern ones:
- S-layers: 2x2 max pooling without parameters. The paper's S2/S4 were a trainable average (a coefficient
  and a bias per map, 12 + 32 parameters) followed by a sigmoid.
- Activations: ReLU, with He initialisation. The paper used 1.7159 tanh(2x/3) and uniform init in
  +-2.4 / fan_in.
- Output: a linear layer (84 x 10 + 10 = 850 parameters) trained with softmax cross-entropy. The paper's
  output was 10 Euclidean RBF units with fixed 7x12 bitmap codes, trained with an MAP criterion.
Trainable parameters: 156 + 1,516 + 48,120 + 10,164 + 850 = 60,806 (the paper: 60,000 plus the fixed RBF).

`LeNet5Caffe` is the other "LeNet-5": Caffe's examples/mnist/lenet.prototxt, the model that Han et al. 2015
("Learning both weights and connections") and Deep Compression (Han, Mao, Dally 2016) prune and compress.

    input (B, 1, 28, 28) -> conv1 5x5, 20 maps (24x24) -> max pool 2 (12x12) -> conv2 5x5, 50 maps (8x8)
      -> max pool 2 (4x4) -> fc1 800 -> 500, ReLU -> fc2 500 -> 10 (logits)

Parameters: 520 + 25,050 + 400,500 + 5,010 = 431,080 (the papers' "431K"). As in Caffe, no ReLU after the
convolutions; the weights are initialised with He's rule instead of Caffe's Xavier filler.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# Table I: which S2 maps (0..5) each C3 map (0..15) reads.
C3_TABLE = (
    [[j % 6, (j + 1) % 6, (j + 2) % 6] for j in range(6)]  # maps 0-5: three neighbours
    + [[(j + k) % 6 for k in range(4)] for j in range(6)]  # maps 6-11: four neighbours
    + [[0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5]]  # maps 12-14: four, not all neighbours
    + [[0, 1, 2, 3, 4, 5]]  # map 15: all six
)


class SparseC3(nn.Module):
    """C3: 16 maps of 5x5 convolutions, map m reading only the S2 maps in C3_TABLE[m].

    The 60 connections' 5x5 kernels are the parameters (60 * 25 + 16 biases = 1,516, as in the paper);
    each forward scatters them into a dense (16, 6, 5, 5) kernel whose other entries are zero and runs one
    dense convolution, which is about 5x faster on CPU than the three grouped convolutions it equals.
    (B, 6, 14, 14) -> (B, 16, 10, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        connections = [(m, s) for m, inputs in enumerate(C3_TABLE) for s in inputs]
        self.register_buffer("slots", torch.tensor([m * 6 + s for m, s in connections]), persistent=False)
        # He initialisation with each map's own fan-in (3, 4 or 6 input maps of 5x5).
        self.register_buffer(
            "init_std", torch.tensor([(2 / (25 * len(C3_TABLE[m]))) ** 0.5 for m, _ in connections]), persistent=False
        )
        self.weight = nn.Parameter(torch.empty(len(connections), 5, 5))
        self.bias = nn.Parameter(torch.zeros(16))
        with torch.no_grad():
            self.weight.normal_().mul_(self.init_std.view(-1, 1, 1))

    def dense_weight(self) -> torch.Tensor:
        return self.weight.new_zeros(16 * 6, 5, 5).index_copy(0, self.slots, self.weight).view(16, 6, 5, 5)

    def forward(self, s2: torch.Tensor) -> torch.Tensor:
        return F.conv2d(s2, self.dense_weight(), self.bias)


class LeNet5(nn.Module):
    """(B, in_channels, 32, 32) float -> (B, num_classes) logits."""

    input_size = 32
    fixed_input = True  # classify checks data.pad against it
    head = "output"

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 6, 5)
        self.c3 = SparseC3()
        self.c5 = nn.Conv2d(16, 120, 5)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)
        for module in (self.c1, self.c5, self.f6, self.output):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"LeNet-5 reads 32x32 images, got {tuple(x.shape[-2:])}; pad MNIST by 2 (data.pad=2)")
        s2 = F.max_pool2d(F.relu(self.c1(x)), 2)  # (B, 6, 14, 14)
        s4 = F.max_pool2d(F.relu(self.c3(s2)), 2)  # (B, 16, 5, 5)
        c5 = F.relu(self.c5(s4)).flatten(1)  # (B, 120)
        return self.output(F.relu(self.f6(c5)))


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet: (B, in_channels, 28, 28) float -> (B, num_classes) logits. 431,080 parameters for MNIST."""

    input_size = 28
    fixed_input = True
    head = "fc2"

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)
        for module in (self.conv1, self.conv2, self.fc1, self.fc2):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (28, 28):
            raise ValueError(
                f"lenet5_caffe reads 28x28 images, got {tuple(x.shape[-2:])} (mnist: data.pad=0, digits: data.pad=10)"
            )
        x = F.max_pool2d(self.conv1(x), 2)  # (B, 20, 12, 12)
        x = F.max_pool2d(self.conv2(x), 2)  # (B, 50, 4, 4)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))
