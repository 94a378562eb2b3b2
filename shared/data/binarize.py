"""Binarized MNIST, as the density-modelling papers use it: each grey level read as the probability of a 1.

Training images are binarized afresh at every epoch ("dynamic binarization"), the test images once,
with a fixed seed, so that every run and every model is scored on the very same binary test set. The
sample for an epoch depends on (seed, epoch) alone, so a resumed run draws what an uninterrupted one
draws. (The fixed binarized MNIST of Larochelle and Murray 2011 is a different draw; its figures are
comparable to ours but not equal.)
"""

from __future__ import annotations

import torch

from shared.rng import stream

TEST_SEED = 20_110_501  # the one draw of the binary test set, shared by every run


def binarize(images: torch.Tensor, seed: int, epoch: int = 0) -> torch.Tensor:
    """uint8 grey (N, C, H, W) -> uint8 {0, 1}, each pixel 1 with probability grey / 255.

    Drawn on the CPU from a generator seeded by (seed, epoch), so the result does not depend on the
    device; it is returned on the images' device.
    """
    generator = stream(seed, "binarization", epoch)
    probs = images.cpu().float().div_(255)
    return torch.bernoulli(probs, generator=generator).to(torch.uint8).to(images.device)


def binarize_test(images: torch.Tensor) -> torch.Tensor:
    """The fixed binary test set: `binarize` with the lab-wide TEST_SEED."""
    return binarize(images, TEST_SEED, epoch=-1)


def binarize_validation(images: torch.Tensor) -> torch.Tensor:
    """A fixed binary validation set (training images held out): one draw like the test set's, from its own stream."""
    return binarize(images, TEST_SEED, epoch=-2)
