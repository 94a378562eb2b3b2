"""Datasets held whole as tensors on the training device, batched by indexing: no per-sample Python.

Images stay uint8 (N, C, H, W) on the device (4x less memory than float) and become floats one batch
at a time in `ImageData.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from shared.errors import ConfigError
from shared.rng import stream


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels {tuple(self.labels.shape)} do not match {self.images.shape[0]} images")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: Optional[int]) -> "Split":
        """The first `n` images (all of them when n is None)."""
        return self if n is None else Split(self.images[:n], self.labels[:n])

    def batches(self, batch_size: int, order: Optional[torch.Tensor] = None, start: int = 0) -> Iterator[tuple]:
        """Yield (images, labels) batches, from batch number `start`, in `order` (a permutation) or as stored."""
        n = len(self)
        for first in range(start * batch_size, n, batch_size):
            if order is None:
                yield self.images[first : first + batch_size], self.labels[first : first + batch_size]
            else:
                index = order[first : first + batch_size]
                yield self.images[index], self.labels[index]


def epoch_order(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """The shuffle of one epoch, a function of (seed, epoch) alone, so a resumed run replays it exactly."""
    return torch.randperm(n, generator=stream(seed, "epoch order", epoch)).to(device)


def hold_out(split: Split, size: int, key: str) -> tuple[Split, Split]:
    """(kept, held): `size` images of `split` held out for validation, the same ones for every seed and run
    (a fixed shuffle), so that selection on them never touches the test set. `key` names the config key in
    the error when nothing would be left to train on."""
    if size >= len(split):
        raise ConfigError(f"{key}={size} leaves no training images (the set has {len(split)})")
    order = epoch_order(len(split), seed=0, epoch=-1, device=split.labels.device)
    held, kept = order[:size], order[size:]
    return Split(split.images[kept], split.labels[kept]), Split(split.images[held], split.labels[held])


@dataclass
class ImageData:
    """A classification dataset: train and test splits plus how to turn a uint8 batch into model input."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]  # per channel, of the training pixels scaled to [0, 1]
    std: tuple[float, ...]
    pad: int = 0  # zero pixels added on each side before normalising (LeNet-5 reads MNIST as 32x32)
    val: Optional[Split] = None  # held out of the training images by the trainer when asked

    def to(self, device: torch.device) -> "ImageData":
        val = self.val.to(device) if self.val is not None else None
        return replace(self, train=self.train.to(device), test=self.test.to(device), val=val)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float (B, C, H + 2 pad, W + 2 pad), zero mean and unit variance."""
        return self.prepare_pixels(images.float().div_(255))

    def prepare_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels as floats in [0, 1] (B, C, H, W) -> the model's input, as `prepare`; differentiable in `x`
        (attacks and saliency maps take gradients in pixel space)."""
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return c, h + 2 * self.pad, w + 2 * self.pad
