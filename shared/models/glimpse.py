"""The pieces of the Recurrent Attention Model (Mnih, Heess, Graves, Kavukcuoglu 2014, "Recurrent models
of visual attention"), shared by the digit classifier (rl/ram.py) and the Atari agent (rl/reinforce.py).

Locations are (row, col) in [-1, 1]^2: (-1, -1) is the top-left corner, (0, 0) the centre. On an image of
side S, location l puts a patch's centre at pixel c = floor((l + 1) / 2 * S), clamped to [0, S - 1]; a
patch of side p covers pixels c - p//2 .. c - p//2 + p - 1 (outside the image: zeros).

    GlimpseSensor   rho(x, l): k patches of sides g, 2g, 4g, ... around l, each average-pooled to g x g
                    (an exact area resize: the sides are g * 2^i), stacked -> (B, k * C, g, g). `pool="max"`
                    max-pools instead: our switch for Atari frames, where averaging an 8x8 block dims a
                    one-pixel ball to 1/64 of its brightness and max-pooling keeps it
    GlimpseNetwork  h_g = relu(W_g rho), h_l = relu(W_l l), g = relu(W_g' h_g + W_l' h_l)   (paper, sec. 4)
    Core            h_t = relu(W_h h_{t-1} + W_x g_t) (the paper's plain RNN for classification), or an LSTM
    LocationPolicy  l_t ~ N(tanh(W h_t), sigma^2 I), sigma fixed (a config number); the sample is the
                    action, the sensor reads it clamped to [-1, 1]

Our documented choice, as in kevinzakka's PyTorch port: the location policy and the baseline read h_t
detached, so REINFORCE trains only the location layer and the hybrid loss's supervised part trains the
rest. The paper's sizes are the defaults: h_g and h_l 128 units, g 256, core 256.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def location_to_pixel(location: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 2) float in [-1, 1] -> (..., 2) int64 pixel indices in [0, size - 1]: floor((l + 1) / 2 * size)."""
    return ((location.clamp(-1, 1) + 1) / 2 * size).floor().long().clamp(0, size - 1)


class GlimpseSensor(nn.Module):
    """x (B, C, H, W) float, locations (B, 2) in [-1, 1] -> retina (B, scales * C, patch, patch) float."""

    def __init__(self, patch: int = 8, scales: int = 1, pool: Literal["avg", "max"] = "avg") -> None:
        super().__init__()
        if patch < 1 or scales < 1:
            raise ValueError(f"glimpse patch and scales must be >= 1, got patch={patch}, scales={scales}")
        if pool not in ("avg", "max"):
            raise ValueError(f"glimpse pool must be 'avg' or 'max', got {pool!r}")
        self.patch, self.scales = patch, scales
        self.pool = F.avg_pool2d if pool == "avg" else F.max_pool2d
        self.sides = [patch * 2**i for i in range(scales)]

    def forward(self, x: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pad = self.sides[-1]  # enough zeros around the image for the largest patch anywhere
        padded = F.pad(x, (pad, pad, pad, pad))
        centre_r = location_to_pixel(locations[:, 0], h)
        centre_c = location_to_pixel(locations[:, 1], w)
        batch = torch.arange(b, device=x.device)[:, None, None]
        patches = []
        for side in self.sides:
            offsets = torch.arange(side, device=x.device) - side // 2 + pad
            rows = (centre_r[:, None] + offsets)[:, :, None]  # (B, side, 1)
            cols = (centre_c[:, None] + offsets)[:, None, :]  # (B, 1, side)
            patch = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, side, side, C)
            patch = patch.permute(0, 3, 1, 2)
            if side != self.patch:
                patch = self.pool(patch, side // self.patch)
            patches.append(patch)
        return torch.cat(patches, dim=1)


class GlimpseNetwork(nn.Module):
    """(x (B, C, H, W), locations (B, 2)) -> glimpse features g (B, out_features)."""

    def __init__(self, channels: int, patch: int = 8, scales: int = 1, what: int = 128, where: int = 128, out_features: int = 256, pool: Literal["avg", "max"] = "avg"):
        super().__init__()
        self.sensor = GlimpseSensor(patch, scales, pool)
        self.what = nn.Linear(scales * channels * patch * patch, what)
        self.where = nn.Linear(2, where)
        self.what_out = nn.Linear(what, out_features)
        self.where_out = nn.Linear(where, out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        retina = self.sensor(x, locations).flatten(1)
        h_what = F.relu(self.what(retina))
        h_where = F.relu(self.where(locations.clamp(-1, 1)))
        return F.relu(self.what_out(h_what) + self.where_out(h_where))


class Core(nn.Module):
    """One recurrent step: (g (B, in_features), state) -> (h (B, hidden), state).

    `kind="rnn"`: the paper's h_t = relu(W_h h_{t-1} + W_x g_t), state = h. `kind="lstm"`: an LSTM cell,
    state = (h, c), the paper's choice for the dynamic (game) environment.
    """

    def __init__(self, in_features: int, hidden: int = 256, kind: Literal["rnn", "lstm"] = "rnn") -> None:
        super().__init__()
        self.kind, self.hidden = kind, hidden
        if kind == "rnn":
            self.input = nn.Linear(in_features, hidden)
            self.recurrent = nn.Linear(hidden, hidden)
        elif kind == "lstm":
            self.cell = nn.LSTMCell(in_features, hidden)
        else:
            raise ValueError(f"core kind must be 'rnn' or 'lstm', got {kind!r}")

    def initial_state(self, batch: int, device: torch.device):
        zeros = torch.zeros(batch, self.hidden, device=device)
        return zeros if self.kind == "rnn" else (zeros, zeros.clone())

    def forward(self, g: torch.Tensor, state) -> tuple[torch.Tensor, object]:
        if self.kind == "rnn":
            h = F.relu(self.input(g) + self.recurrent(state))
            return h, h
        h, c = self.cell(g, state)
        return h, (h, c)

    @staticmethod
    def reset(state, keep: torch.Tensor):
        """Zero the state of the rows where `keep` (B,) is False (an episode ended there)."""
        mask = keep.to(torch.float32)[:, None]
        if isinstance(state, tuple):
            return tuple(s * mask for s in state)
        return state * mask


class LocationPolicy(nn.Module):
    """h (B, hidden) -> the mean (B, 2) in [-1, 1] of a Gaussian with fixed std over the next location."""

    def __init__(self, hidden: int, std: float) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"the location policy's std must be > 0, got {std}")
        self.mean = nn.Linear(hidden, 2)
        self.std = std

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mean(h.detach()))

    def sample(self, mean: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + self.std * noise

    def log_prob(self, mean: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """log N(location; mean, std^2 I), summed over the 2 coordinates -> (B,)."""
        z = (location - mean) / self.std
        return (-0.5 * z.pow(2) - math.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)
