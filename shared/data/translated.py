"""Translated and cluttered MNIST, as in the Recurrent Attention Model paper (Mnih et al. 2014, sec. 5.1).

    translated:  each 28x28 digit pasted at a uniformly random position on a blank canvas (60x60)
    cluttered:   the same, plus `clutter` fragments of `fragment` x `fragment` pixels cut at random from
                 other random digits of the same split and pasted at random places (the paper: 4 of 8x8
                 on 60x60, 8 of 8x8 on 100x100); overlaps keep the brighter pixel

`place(split, canvas, clutter, fragment, seed, epoch)` is a pure function of its arguments: the training
set is drawn afresh for each epoch from (seed, epoch), as the paper generated its data on the fly, and the
test set once from a fixed seed, so every run is scored on the same images.
"""

from __future__ import annotations

import torch

from shared.data.tensors import Split
from shared.rng import stream

TEST_SEED = 20_140_624  # the one draw of the translated/cluttered test sets, shared by every run


def place(split: Split, canvas: int, clutter: int = 0, fragment: int = 8, seed: int = 0, epoch: int = 0) -> Split:
    """uint8 digits (N, 1, h, w) -> uint8 (N, 1, canvas, canvas) with the same labels, on the split's device."""
    images = split.images.cpu()
    n, _, h, w = images.shape
    if canvas < max(h, w):
        raise ValueError(f"canvas {canvas} is smaller than the {h}x{w} digits")
    if clutter and not 0 < fragment <= min(h, w):
        raise ValueError(f"clutter fragments must be 1..{min(h, w)} pixels wide, got {fragment}")
    generator = stream(seed, "canvas", epoch)
    out = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    rows_n = torch.arange(n)[:, None, None]
    for _ in range(clutter):  # clutter first: the digit is pasted over it with a max, so it stays whole
        source = torch.randint(0, n, (n,), generator=generator)
        top = torch.randint(0, h - fragment + 1, (n,), generator=generator)
        left = torch.randint(0, w - fragment + 1, (n,), generator=generator)
        at_r = torch.randint(0, canvas - fragment + 1, (n,), generator=generator)
        at_c = torch.randint(0, canvas - fragment + 1, (n,), generator=generator)
        offsets = torch.arange(fragment)
        piece = images[
            source[:, None, None], 0, (top[:, None] + offsets)[:, :, None], (left[:, None] + offsets)[:, None, :]
        ]
        _paste_max(out, rows_n, at_r, at_c, fragment, fragment, piece)
    at_r = torch.randint(0, canvas - h + 1, (n,), generator=generator)
    at_c = torch.randint(0, canvas - w + 1, (n,), generator=generator)
    _paste_max(out, rows_n, at_r, at_c, h, w, images[:, 0])
    return Split(out.unsqueeze(1).to(split.images.device), split.labels)


def _paste_max(
    out: torch.Tensor,
    rows_n: torch.Tensor,
    at_r: torch.Tensor,
    at_c: torch.Tensor,
    h: int,
    w: int,
    pieces: torch.Tensor,
) -> None:
    """out[i, at_r[i]:+h, at_c[i]:+w] = max(itself, pieces[i]) for every i, in place; pieces (N, h, w)."""
    rows = (at_r[:, None] + torch.arange(h))[:, :, None]
    cols = (at_c[:, None] + torch.arange(w))[:, None, :]
    out[rows_n, rows, cols] = torch.maximum(out[rows_n, rows, cols], pieces)
