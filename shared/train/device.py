"""Pick the torch device a config asks for, and say clearly when it is not there."""

from __future__ import annotations

import torch

from shared.errors import ConfigError


def select_device(name: str) -> torch.device:
    """`auto` takes cuda, then mps, then cpu; an explicit accelerator that is missing is a ConfigError."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        build = (
            "a CPU-only build"
            if torch.version.cuda is None
            else f"built for CUDA {torch.version.cuda}, but no GPU is visible"
        )
        raise ConfigError(
            f"device='cuda' but this torch ({torch.__version__}) is {build}; use device=cpu or device=auto"
        )
    if name == "mps" and not mps:
        raise ConfigError("device='mps' but the Apple MPS backend is not available here; use device=cpu or device=auto")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU): a timer must not stop before a CUDA kernel ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
