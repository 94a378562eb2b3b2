"""Shared fixtures: W&B offline and quiet, the real MNIST folder when it exists, a CLI runner, and synthetic run
folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# Under pytest-xdist (`-n 2`, the README's command) each worker, and every process it starts, computes with one
# thread: two workers with two threads each on a 2-core machine would spin against each other (OpenMP busy-waits).
# Set before torch is imported, so the worker's own torch reads it too.
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
# The real MNIST files beside the checkout (../shared/data/mnist); tests that need them skip without them.
SHARED_DATA = Path(os.environ.get("PIXLAB_TEST_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _quiet_offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def mnist_root() -> Path:
    if not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"the real MNIST files are not in {SHARED_DATA / 'mnist'}")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`pixlab ARGS` in a fresh interpreter, as a user runs it."""
    # An in-process wandb.init leaves WANDB_SERVICE (its service's socket) in os.environ; a child that
    # inherits it hands its run to that service instead of its own, and may exit before the files are written.
    inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env = inherited | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def only_run_dir(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def write_run(folder: Path, config: dict, records: list[dict], summary: dict | None = None) -> Path:
    """A run folder as a trainer leaves it, for the readers of runs: config.yaml and metrics.jsonl (the step
    records, then the final summary record when given)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps(r) for r in records] + ([json.dumps({"summary": summary})] if summary else [])
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder
