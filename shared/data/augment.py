"""Batched augmentation on the training device: random crop with zero padding and horizontal flip.

Each step draws from a generator seeded by (seed, step) alone, so a resumed run augments exactly as an
uninterrupted one, with no generator state to checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    crop_padding: int = 0  # crop the original size from the image zero-padded by this many pixels (0: off)
    flip: bool = False  # mirror left-right with probability 1/2 (not for digits)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed((seed % 2**31) * 2**32 + step)


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): image b is padded[b, :, dy:dy+H, dx:dx+W] with dy, dx uniform in [0, 2 padding]."""
    b, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=images.device)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def augment(images: torch.Tensor, cfg: AugmentConfig, seed: int, step: int) -> torch.Tensor:
    """The configured transforms of one training step's batch; untouched (and no generator made) when none is on."""
    if not (cfg.crop_padding or cfg.flip):
        return images
    generator = step_generator(seed, step, images.device)
    if cfg.crop_padding:
        images = random_crop(images, cfg.crop_padding, generator)
    if cfg.flip:
        images = random_flip(images, generator)
    return images
