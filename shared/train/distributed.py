"""Data-parallel training with PyTorch DDP, launched by torchrun; one process is the same code with world size 1.

    torchrun --standalone --nproc_per_node 2 -m shared.cli train CONFIG [key=value ...]

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` joins the process group (NCCL on GPUs, gloo on
CPU). Rank 0 owns the run folder, the logs and the checkpoints; every rank trains on its own slice of
each global batch, and DDP averages the gradients, so N processes take the same steps as one process
with the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda becomes cuda:<local rank>."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.enabled else device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, batch_size: int) -> slice:
        """This rank's contiguous slice of a global batch of `batch_size` (the last ranks may get one fewer)."""
        per_rank, extra = divmod(batch_size, self.world_size)
        start = self.rank * per_rank + min(self.rank, extra)
        return slice(start, start + per_rank + (1 if self.rank < extra else 0))

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when `flag` is true on any rank (a signal reached one process, say)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def max_difference(self, model: nn.Module) -> float:
        """Largest absolute difference between this rank's parameters and rank 0's (0.0 when in step)."""
        if not self.enabled:
            return 0.0
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        reference = flat.clone()
        dist.broadcast(reference, src=0)
        difference = (flat - reference).abs().max()
        dist.all_reduce(difference, op=dist.ReduceOp.MAX)
        return difference.item()


def init() -> Distributed:
    """Join the torchrun process group if there is one; otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
