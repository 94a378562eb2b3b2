"""Speed switches for a training step: mixed precision, channels_last, torch.compile, cudnn.benchmark.

    accel = Accelerator(cfg.accel, device)
    model = accel.prepare(model)
    with accel.autocast():
        loss = loss_fn(model(accel.to_input(x)), y)
    accel.backward_step(loss, optimizer, model.parameters(), grad_clip)

precision=auto means, on a GPU, bf16 autocast where it supports bf16 and fp16 with a gradient scaler where
it does not; on a CPU, bf16 autocast where the CPU has bf16 matrix units (AMX, or AVX-512 BF16) and fp32
elsewhere: on an AVX2-only CPU, bf16 autocast ran slower than fp32 for small convnets, while on a Xeon with
AMX the Nature CNN's train step went from 85 to 128 steps/s (issue 13). The scaler's state goes into
checkpoints through `state_dict`.

A training step that accumulates gradients over several backward passes, or clips them, or reads their
norm, uses the three moves of `backward_step` one by one: `backward` (per loss), `unscale` (before reading
the gradients), `step`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Literal, Optional

import torch
import torch.nn as nn

from shared.errors import ConfigError
from shared.machine import cpu_isa


@dataclass
class AccelConfig:
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: by device and CPU (the module docstring)
    compile: bool = (
        False  # torch.compile the model: for GPUs (on this 2-core CPU LeNet-5 ran 7.9k vs 13.0k img/s eager)
    )
    channels_last: bool = False  # NHWC memory layout: faster convolutions with tensor cores
    cudnn_benchmark: bool = True  # let cuDNN time its algorithms for fixed input shapes


def cpu_has_bf16_matrix_units() -> bool:
    """Whether torch reports AMX tiles or AVX-512 BF16 on this CPU (an older torch that cannot tell: no)."""
    isa = cpu_isa()
    return bool(isa["amx"] or isa["avx512_bf16"])


def resolve_precision(setting: str, device: torch.device) -> str:
    """accel.precision -> the precision used on `device`: fp32, bf16 or fp16 (module docstring)."""
    if setting == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_has_bf16_matrix_units():
            return "bf16"
        return "fp32"
    if setting == "fp16" and device.type == "mps":
        raise ConfigError("accel.precision='fp16' is not supported on mps here; use fp32 or bf16")
    return setting


class Accelerator:
    """One AccelConfig applied: the precision, layout and compilation of a model and its gradient steps."""

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

    def prepare(self, model: nn.Module, in_place: bool = False) -> nn.Module:
        """Move to the device and layout; compile if asked. Returns the module to call (maybe compiled).

        in_place=True compiles the module's own __call__ (nn.Module.compile) and returns `model` itself, so
        that its methods which call self(...) (a policy's act and evaluate) run compiled too; a torch.compile
        wrapper would hand those methods the eager module.
        """
        model = model.to(self.device)
        if self.cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.compile:
            if in_place:
                model.compile()
            else:
                model = torch.compile(model)
        return model

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the model's layout: (B, C, H, W) made channels_last when asked; other shapes as they are."""
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last and x.dim() == 4 else x

    def autocast(self):
        """The mixed-precision context of a forward pass (a no-op under fp32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[nn.Parameter],
        grad_clip: Optional[float] = None,
        update_scale: bool = True,
    ) -> None:
        """One gradient step: zero_grad, backward (scaled under fp16), optional global-norm clipping, optimizer step.

        update_scale=False for every optimizer but the last of a training step that steps several (DCGAN's
        discriminator before its generator): the fp16 loss scale is updated once per training step.
        """
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        if grad_clip:
            self.unscale(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.step(optimizer, update_scale)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), the loss scaled under fp16; gradients add up until `step`."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide `optimizer`'s gradients by the fp16 loss scale (a no-op otherwise): before reading or clipping them."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, update_scale: bool = True) -> None:
        """optimizer.step(); under fp16 skipped when the scaled gradients overflowed, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        if update_scale:
            self.scaler.update()

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else {}}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Restore the scaler; None (a checkpoint from before its trainer had an Accelerator) keeps it fresh."""
        if self.scaler is not None and state and state["scaler"]:
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
