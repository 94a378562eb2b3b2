"""Optimizers and learning-rate schedules named by config, the same for every trainer.

Weight decay applies to weights only: biases and normalisation parameters (every tensor of one
dimension or less) sit in a second parameter group with no decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    name: Literal["constant", "step", "cosine"] = "constant"
    milestones: list[int] = field(default_factory=list)  # step: multiply the lr by gamma at these training steps
    gamma: float = 0.1


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int):
    """A scheduler stepped once per training step."""
    if cfg.name == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineDecay(total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, Constant())


class CosineDecay:
    """lr factor 0.5 (1 + cos(pi t / T)) from 1 at step 0 to 0 at step T. A class, so its state can be saved."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = max(1, total_steps)

    def __call__(self, step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


class Constant:
    def __call__(self, step: int) -> float:
        return 1.0
