"""What meta.json records about where a run ran: the git commit and dirty flag, package versions, device."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

import torch

from shared.config import REPO

PACKAGES = ("torch", "numpy", "gymnasium", "ale-py", "wandb", "omegaconf", "pixlab")


def git_state(source: Path = REPO) -> Optional[dict]:
    """The commit and dirty flag of the source tree pixlab runs from, or None outside a git checkout.

    Dirty means a tracked file outside runs/ differs from the commit: runs/ holds results the lab itself writes
    (reproduce.json, curves), so a reproduction that updates them does not mark its own later runs dirty."""

    def git(*args):
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        if commit.returncode != 0:
            return None
        status = git("status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)runs")
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
