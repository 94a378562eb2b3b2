"""What meta.json records about where a run ran: the git commit and dirty flag, package versions, device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

PACKAGES = ("torch", "numpy", "gymnasium", "ale-py", "wandb", "omegaconf", "pixlab")


def git_state() -> Optional[dict]:
    """The commit and dirty flag of the source tree pixlab runs from, or None outside a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def package_versions() -> dict:
    """{package: version or None when it is not installed} for PACKAGES."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_device(device: torch.device) -> dict:
    """The device's type and name (GPU model and CUDA version, or the CPU), and torch's thread count."""
    info = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["processor"] = platform.processor() or platform.machine()
    return info
