"""Speed switches for a training step: mixed precision, channels_last, torch.compile, cudnn.benchmark.

    accel = Accelerator(cfg.accel, device)
    model = accel.prepare(model)
    with accel.autocast():
        loss = loss_fn(model(accel.to_input(x)), y)
    accel.backward_step(loss, optimizer, model.parameters(), grad_clip)

precision=auto means bf16 autocast on a GPU that supports it, fp16 with a gradient scaler on one that
does not, and fp32 on CPU (CPU autocast is slower than fp32 for small convnets). The scaler's state
goes into checkpoints through `state_dict`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import torch
import torch.nn as nn

from shared.errors import ConfigError
from shared.train.optim import descend


@dataclass
class AccelConfig:
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False  # torch.compile the model: for GPUs (on this 2-core CPU LeNet-5 ran 7.9k vs 13.0k img/s eager)
    channels_last: bool = False  # NHWC memory layout: faster convolutions with tensor cores
    cudnn_benchmark: bool = True  # let cuDNN time its algorithms for fixed input shapes


def resolve_precision(setting: str, device: torch.device) -> str:
    if setting == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if setting == "fp16" and device.type == "mps":
        raise ConfigError("accel.precision='fp16' is not supported on mps here; use fp32 or bf16")
    return setting


class Accelerator:
    def __init__(self, cfg: AccelConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.precision = resolve_precision(cfg.precision, device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # Only fp16 needs loss scaling: its 5-bit exponent underflows small gradients; bf16 has fp32's range.
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        )
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = cfg.cudnn_benchmark

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move to the device and layout; compile if asked. Returns the module to call (maybe compiled)."""
        model = model.to(self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            model = torch.compile(model)
        return model

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and x.dim() == 4 else x

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[nn.Parameter],
        grad_clip: Optional[float] = None,
    ) -> None:
        """zero_grad, backward (scaled under fp16), optional global-norm clipping, optimizer step."""
        if self.scaler is None:
            descend(loss, optimizer, parameters, grad_clip)
            return
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if grad_clip:
            self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DistributedDataParallel wrappers (for state_dict, heads)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
