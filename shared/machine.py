"""The machine a measured figure came from: every benchmark's JSON carries it, so a speed is never read without
the CPU, ISA, threads and torch build that produced it (`pixlab bench ...`; usable by `pixlab reproduce`).

The ISA flags are torch's own view (`torch.cpu._is_*_supported`), the one that decides which kernels run:
avx2 and avx512f set the vector width of fp32 kernels; avx512_bf16 and amx (AMX tiles) are the bf16 matrix
units that make CPU bf16 autocast pay (without them bf16 is emulated and slower than fp32 for small convnets).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Optional

import torch

# flag in the report -> torch's probe; a probe this torch build lacks reads as None (unknown)
ISA_PROBES = {
    "avx2": "_is_avx2_supported",
    "avx512f": "_is_avx512_supported",
    "avx512_bf16": "_is_avx512_bf16_supported",
    "amx": "_is_amx_tile_supported",
}


def describe_machine(device: Optional[torch.device] = None) -> dict:
    """{cpu, isa: {avx2, avx512f, avx512_bf16, amx}, cpu_capability, cores, threads, torch, device[, gpu]}."""
    description = {
        "cpu": cpu_model(),
        "isa": cpu_isa(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the kernel set torch dispatches to
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def describe_run_machine(cfg) -> dict:
    """describe_machine for the device a run's config selects, with the precision its `accel:` resolves to there."""
    from shared.train.accel import resolve_precision  # shared.train imports this module
    from shared.train.device import select_device

    device = select_device(getattr(cfg, "device", "auto"))
    accel = getattr(cfg, "accel", None)
    precision = resolve_precision(accel.precision, device) if accel is not None else "fp32"
    return describe_machine(device) | {"precision": precision}


def cpu_isa() -> dict:
    """{avx2, avx512f, avx512_bf16, amx}: True or False as torch sees this CPU, None where torch cannot tell."""
    return {flag: _probe(name) for flag, name in ISA_PROBES.items()}


def cpu_model() -> str:
    """The CPU's marketing name ('AMD EPYC 7B13', 'Intel(R) Xeon(R) ...'), from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def format_machine(machine: dict) -> str:
    """One line for a bench's table header: 'AMD EPYC, avx2, 1 of 2 threads, torch 2.13.0, cpu'."""
    flags = ", ".join(flag for flag, present in machine["isa"].items() if present) or "no avx2"
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    threads = f"{machine['threads']} of {machine['cores']} threads"
    return f"{machine['cpu']}, {flags}, {threads}, torch {machine['torch']}, {machine['device']}{gpu}"


def _probe(name: str) -> Optional[bool]:
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if probe is not None else None
