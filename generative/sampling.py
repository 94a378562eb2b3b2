"""Sampling an autoregressive image model: the naive loop, and a cached one that gives the same images faster.

    images = sample(model, count=64, shape=(1, 28, 28), seed=0)                # cached
    same = sample(model, count=64, shape=(1, 28, 28), seed=0, cached=False)    # naive, the reference
    completed = sample(model, 8, (1, 28, 28), seed=0, given=images[:8], start_row=14)  # the top 14 rows kept

Both visit the sub-pixels in raster order (row, column, then R -> G -> B) and draw each value from the
model's distribution by inverse CDF against a uniform drawn up front from `seed`. The two samplers thus
consume identical randomness, and given the same conditionals they write the same images.

The naive sampler runs the whole network on the whole canvas for every sub-pixel: C*H*W forward passes
over H*W positions, of which one is read. The cached sampler uses what the masks guarantee: in every layer
the activation at (r, c) depends only on inputs at rows < r, or at row r and columns <= c. Once the
sub-pixels up to (r, c) are drawn, each layer can be computed at (r, c) alone, from a window of its own
input map, and the windows' earlier positions were filled in at earlier steps. So a `Cursor` keeps one
input map per masked convolution, written one position at a time, and a forward pass with a cursor
computes each layer at the cursor's position only: O(layers) small matrix products per sub-pixel instead
of O(layers * H * W). With colour a position is computed once per channel, over the sub-pixels drawn so
far; the maps keep the last visit's values, which are final: no activation at (r, c) depends on the B
sub-pixel of (r, c), the one still undrawn then (mask A gives it to no group, mask B keeps groups apart).

Completion (`given`, `start_row`): the rows above `start_row` are copied from `given` and the rest drawn,
each sub-pixel conditioned on the given rows as on the drawn ones. The naive sampler starts at `start_row`; the
cached one still visits each given position once, to write its activations into the maps (a later position's
window reads them), but draws nothing there. The uniforms are drawn for the whole canvas as before.

A model takes part through its forward signature `model(images, labels, cursor)`: without a cursor it
returns logits (B, K, C, H, W) for the whole image; with one, the logits at the cursor's position,
(B, K, C, 1, 1). Its masked convolutions call `cursor.convolve`; a part that is cheaper to recompute by
rows (the Gated PixelCNN's vertical stack, which at row r reads rows < r only) calls `cursor.once_per_row`.
The cached values differ from the full convolution's by float rounding alone (another order of the same
sums), so a draw can differ only when its uniform falls within that rounding of a CDF step.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cursor:
    """Where the cached sampler is, and the input map of each masked convolution up to that position."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.row = self.col = 0
        self.maps: dict[nn.Module, torch.Tensor] = {}  # conv -> its input map, zero-padded above and at the sides
        self.rows: dict[nn.Module, tuple[int, object]] = {}  # module -> (row, what once_per_row computed at it)

    def move(self, row: int, col: int) -> None:
        self.row, self.col = row, col

    def convolve(self, conv: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The output of `conv` (masked `weight` (C_out, C_in, kh, kw), its `bias`) at the cursor: (B, C_out, 1, 1).

        x is the convolution's input at the cursor, (B, C_in, 1, 1), stored into its map before the window
        is read; or, for a first layer, its whole input map (B, C_in, H, W): the canvas being sampled.
        """
        if weight.shape[-2:] == (1, 1):  # a 1x1 convolution needs its input at the cursor alone: no map
            return F.conv2d(x, weight, conv.bias)
        top, side = weight.shape[-2] // 2, weight.shape[-1] // 2
        weight = weight[:, :, : top + 1]  # the rows below the centre are masked whole: neither stored nor read
        if x.shape[-2:] == (self.height, self.width):
            padded = F.pad(x, (side, side, top, 0))
        else:
            padded = self.maps.get(conv)
            if padded is None:
                padded = x.new_zeros(x.shape[0], x.shape[1], self.height + top, self.width + 2 * side)
                self.maps[conv] = padded
            padded[:, :, self.row + top, self.col + side] = x[:, :, 0, 0]
        window = padded[:, :, self.row : self.row + top + 1, self.col : self.col + 2 * side + 1]
        return F.conv2d(window, weight, conv.bias)

    def once_per_row(self, module: nn.Module, compute: Callable[[], object]) -> object:
        """`compute()` at the first call in each row, its result again at the later calls of that row."""
        cached = self.rows.get(module)
        if cached is None or cached[0] != self.row:
            cached = self.rows[module] = (self.row, compute())
        return cached[1]


def draw(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One sub-pixel of each image by inverse CDF: logits (B, K), uniforms (B,) in [0, 1) -> values (B,) int64.

    K = 1 is a Bernoulli logit: the value is 1 when u < p. Otherwise the value is the number of CDF steps
    at or below u, i.e. the smallest k with u < P(value <= k). Computed in float64.
    """
    logits = logits.double()
    if logits.shape[1] == 1:
        return (uniforms < torch.sigmoid(logits[:, 0])).long()
    cdf = torch.softmax(logits, dim=1).cumsum(dim=1)
    return (cdf <= uniforms[:, None]).sum(dim=1).clamp(max=logits.shape[1] - 1)  # clamp: cdf[-1] may round below u


@torch.no_grad()
def sample(
    model: nn.Module,
    count: int,
    shape: tuple[int, int, int],
    seed: int,
    labels: Optional[torch.Tensor] = None,
    cached: bool = True,
    given: Optional[torch.Tensor] = None,
    start_row: int = 0,
) -> torch.Tensor:
    """`count` images of `shape` (C, H, W) drawn from `model`: int64 (count, C, H, W) pixel levels.

    labels (count,) int64 for a class-conditional model, else None. The uniforms come from a CPU generator
    seeded by `seed`, so the images depend on (weights, seed, labels) alone, not on the device's RNG.
    given (count, C, H, W) pixel levels with `start_row` > 0: a completion, whose rows < start_row are those
    of `given`, unchanged, and whose rows >= start_row are drawn conditioned on them.
    """
    channels, height, width = shape
    if not 0 <= start_row <= height:
        raise ValueError(f"start_row={start_row} must be in 0..{height}, the rows of the image")
    if start_row and (given is None or tuple(given.shape) != (count, *shape)):
        raise ValueError(f"start_row={start_row} needs given images of shape {(count, *shape)}")
    device = next(model.parameters()).device
    uniforms = torch.rand(
        (count, channels, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    uniforms = uniforms.to(device)
    canvas = torch.zeros(count, channels, height, width, dtype=torch.long, device=device)
    if start_row:
        canvas[:, :, :start_row] = given[:, :, :start_row].to(device)
    cursor = Cursor(height, width) if cached else None
    was_training = model.training
    model.eval()
    for row in range(0 if cursor is not None else start_row, height):
        drawn = row >= start_row
        # A given position is visited once: its sub-pixels are all on the canvas already, so one visit computes
        # every colour group's activations from all the inputs each may read, the maps' final values.
        for col in range(width):
            for channel in range(channels if drawn else 1):
                if cursor is None:
                    logits = model(canvas, labels)[:, :, channel, row, col]
                else:
                    cursor.move(row, col)
                    logits = model(canvas, labels, cursor)[:, :, channel, 0, 0]
                if drawn:
                    canvas[:, channel, row, col] = draw(logits, uniforms[:, channel, row, col])
    model.train(was_training)
    return canvas
