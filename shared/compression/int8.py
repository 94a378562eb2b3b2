"""Post-training dynamic int8 quantization through PyTorch's own API (lecture 15's "quantization", the
deployment path rather than Deep Compression's storage format).

`torch.ao.quantization.quantize_dynamic` stores each nn.Linear's weights as int8 with one fp32 scale per
tensor, and quantizes the activations on the fly, batch by batch; convolutions stay fp32 (dynamic
quantization covers only Linear and recurrent layers). It runs on CPU only. What it saves is measured the way a
user would: the bytes of `torch.save(state_dict)`, and test-set images per second through each model on CPU.
"""

from __future__ import annotations

import copy
import io
import time
import warnings

import torch
import torch.nn as nn

from shared.data import ImageData, Split


def quantize_int8(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` with every nn.Linear dynamically quantized to int8 (the model is not changed)."""
    dense = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        # torch marks torch.ao.quantization and its quantized tensors deprecated in favour of torchao, which is not
        # a dependency: the API still works (torch 2.13), and the warnings would print on every run for nothing
        # the user can do. The README says so.
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        return torch.ao.quantization.quantize_dynamic(dense, {nn.Linear}, dtype=torch.qint8)


def saved_bytes(model: nn.Module) -> int:
    """Bytes of `torch.save(model.state_dict())`, the file a user would ship."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@torch.no_grad()
def images_per_second(model: nn.Module, split: Split, data: ImageData, batch_size: int, repeats: int) -> float:
    """CPU inference throughput over the whole split, the best of `repeats` passes (the least disturbed by other
    processes on the machine). Only the forward passes are timed, not the preparation of the batches."""
    model.eval()
    batches = [data.prepare(images.cpu()) for images, _ in split.batches(batch_size)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for x in batches:
            model(x)
        best = min(best, time.perf_counter() - start)
    return len(split) / best
