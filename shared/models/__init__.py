"""Models by name, so that a config can name any of them: `build_model("lenet5", num_classes=10)`."""

from __future__ import annotations

import torch.nn as nn

from shared.models.lenet import LeNet5

MODELS: dict[str, type[nn.Module]] = {
    "lenet5": LeNet5,
}


def build_model(name: str, num_classes: int, in_channels: int = 1) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
