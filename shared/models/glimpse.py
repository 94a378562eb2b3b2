"""The pieces of the Recurrent Attention Model (Mnih, Heess, Graves, Kavukcuoglu 2014, "Recurrent models
of visual attention"), shared by the digit classifier (rl/ram.py) and the Atari agent (rl/reinforce.py),
and that agent itself.

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
    GlimpseAgent    the model as a game-playing agent: one glimpse per agent step, an action and a next
                    location sampled from the state (trained by REINFORCE in rl/reinforce.py)

GlimpseConfig holds the sizes of all of them; the classifier's `glimpses` is its number of looks per image.

Our documented choice, as in kevinzakka's PyTorch port: the location policy and the baseline read h_t
detached, so REINFORCE trains only the location layer and the hybrid loss's supervised part trains the
rest. (Letting the location's REINFORCE gradient into h_t, as the paper's training of all parameters on the
hybrid loss would, was tried with a temporary switch on translated MNIST: 60% validation error after 10
epochs, against 9.6% detached; runs/reproduce-ram-translated-60-cpu/probes/.) The paper's sizes are the
defaults: h_g and h_l 128 units, g 256, core 256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GlimpseConfig:
    glimpses: int = 6  # the classifier's looks per image (the agent takes one per agent step)
    patch: int = 8  # side of the retina's finest patch (paper: 8 on MNIST, 12 on translated)
    scales: int = 1  # patches per glimpse, sides patch * 2^i (paper: 1 on MNIST, 3 on translated)
    pool: Literal["avg", "max"] = "avg"  # how coarser patches shrink to patch x patch (avg: the paper's)
    what: int = 128  # h_g units
    where: int = 128  # h_l units
    glimpse_features: int = 256  # g units
    hidden: int = 256  # core units
    core: Literal["rnn", "lstm"] = "rnn"
    location_std: float = 0.05  # the location policy's fixed std, in units of the half image side


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

    def __init__(
        self,
        channels: int,
        patch: int = 8,
        scales: int = 1,
        what: int = 128,
        where: int = 128,
        out_features: int = 256,
        pool: Literal["avg", "max"] = "avg",
    ):
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
        # fp32 under autocast too: log pi divides (l - mean) by a std of 0.05-0.1, which would magnify bf16's
        # rounding of the mean (3 significant digits) 10 to 20 times. The layer is 2 units wide: it costs nothing.
        with torch.autocast(h.device.type, enabled=False):
            return torch.tanh(self.mean(h.detach().float()))

    def sample(self, mean: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A location drawn around `mean`, detached: an action, so that log_prob(mean, sample) carries
        REINFORCE's gradient to the mean, and no loss can move the location along the sample's path."""
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return (mean + self.std * noise).detach()

    def log_prob(self, mean: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        """log N(location; mean, std^2 I), summed over the 2 coordinates -> (B,)."""
        z = (location - mean) / self.std
        return (-0.5 * z.pow(2) - math.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(-1)


class GlimpseAgent(nn.Module):
    """The Recurrent Attention Model as a game-playing agent (the paper's section 5.2, our own version):
    each agent step it takes one glimpse of the frame stack where it chose to look, updates an LSTM core,
    and samples both the game action and the next location; REINFORCE (rl/reinforce.py) trains it on the
    game's reward. The first glimpse of an episode looks at the centre.

    obs (B, C, H, W) uint8; memory = (core state, location (B, 2) of the next glimpse).
    """

    recurrent = True

    def __init__(self, channels: int, num_actions: int, cfg: GlimpseConfig) -> None:
        super().__init__()
        self.glimpse = GlimpseNetwork(
            channels, cfg.patch, cfg.scales, cfg.what, cfg.where, cfg.glimpse_features, cfg.pool
        )
        self.core = Core(cfg.glimpse_features, cfg.hidden, cfg.core)
        self.locate = LocationPolicy(cfg.hidden, cfg.location_std)
        self.logits = nn.Linear(cfg.hidden, num_actions)
        self.value = nn.Linear(cfg.hidden, 1)  # the baseline, on the detached state as in the classifier

    def initial_memory(self, n: int, device: torch.device):
        return self.core.initial_state(n, device), torch.zeros(n, 2, device=device)

    def reset_memory(self, memory, keep: torch.Tensor):
        state, location = memory
        return self.core.reset(state, keep), location * keep.to(location.dtype)[:, None]

    def forward(self, obs: torch.Tensor, location: torch.Tensor, state):
        """One glimpse at `location` (B, 2) -> (h, state, action logits (B, A), next location's mean (B, 2), value (B,)).

        The logits and the value come out in fp32 under autocast too, for the log-probabilities and the baseline.
        """
        h, state = self.core(self.glimpse(obs.float() / 255, location), state)
        return h, state, self.logits(h).float(), self.locate(h), self.value(h.detach()).squeeze(-1).float()

    def act(self, obs: torch.Tensor, memory) -> tuple[torch.Tensor, dict, tuple]:
        """-> (actions (B,), {'location', 'next_location', 'value'} to store with the step, memory)."""
        state, location = memory
        _, state, logits, mean, value = self(obs, location, state)
        action = torch.distributions.Categorical(logits=logits).sample()
        next_location = self.locate.sample(mean)
        return action, {"location": location, "next_location": next_location, "value": value}, (state, next_location)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor, extras: dict, mask: torch.Tensor):
        """Whole episodes side by side, obs (T, E, C, H, W), from their first step -> (log pi, entropy,
        value), each (T, E); log pi is that of the joint choice (action, next location)."""
        state = self.core.initial_state(obs.shape[1], obs.device)
        log_probs, entropies, values = [], [], []
        for t in range(obs.shape[0]):
            _, state, logits, mean, value = self(obs[t], extras["location"][t], state)
            dist = torch.distributions.Categorical(logits=logits)
            log_probs.append(dist.log_prob(actions[t]) + self.locate.log_prob(mean, extras["next_location"][t]))
            entropies.append(dist.entropy())
            values.append(value)
        return torch.stack(log_probs), torch.stack(entropies), torch.stack(values)
