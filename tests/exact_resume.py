"""The resume check every epoch trainer shares: a run stopped mid-way and resumed with `pixlab resume` ends
with the weights and the metrics.jsonl of the same run left alone, tensor for tensor and record for record
(wall-clock figures aside)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from conftest import only_run_dir

from shared.cli import main
from shared.run import latest_checkpoint, list_checkpoints, load_checkpoint
from shared.tracking import read_metrics

VOLATILE = {"wall_time", "train/images_per_s"}  # wall-clock figures, different in every run


def comparable_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock figures."""
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run_dir / "metrics.jsonl")]


def assert_runs_end_alike(straight: Path, resumed: Path, states: tuple[str, ...]) -> None:
    """The two runs' last checkpoints hold the same step and equal tensors in every state of `states`, and
    their metrics files agree but for wall-clock figures."""
    end_a, end_b = load_checkpoint(latest_checkpoint(straight)), load_checkpoint(latest_checkpoint(resumed))
    assert end_a["step"] == end_b["step"]
    for state in states:
        assert end_a["state"][state].keys() == end_b["state"][state].keys(), state
        for name, tensor in end_a["state"][state].items():
            assert torch.equal(tensor, end_b["state"][state][name]), (state, name)
    assert comparable_metrics(resumed) == comparable_metrics(straight)


def assert_resume_is_exact(
    config: str,
    overrides: list[str],
    tmp_path: Path,
    stop_at: int,
    states: tuple[str, ...] = ("model",),
    written_before: Optional[Callable[[dict], dict]] = None,
) -> None:
    """Train `config` once (its budget set by `overrides`, checkpoints every `stop_at` steps); copy the run as it
    stood at step `stop_at` (the later checkpoints removed), resume the copy, and compare the two ends.

    `written_before(counters) -> counters` rewrites the checkpoint that is resumed into the form an older
    pixlab wrote: such a checkpoint must resume alike.
    """
    quiet = ["tracking.wandb=disabled", f"checkpoint.every={stop_at}", "checkpoint.keep_last=1000"]
    assert main(["train", config, *overrides, *quiet, f"runs_dir={tmp_path / 'straight'}"]) == 0
    straight = only_run_dir(tmp_path / "straight")
    stopped = tmp_path / "stopped" / straight.name
    shutil.copytree(straight, stopped)
    later = [path for path in list_checkpoints(stopped) if load_checkpoint(path)["step"] > stop_at]
    assert later, f"the run ended at step {stop_at}: nothing to resume"
    for path in later:
        path.unlink()
    if written_before is not None:
        path = latest_checkpoint(stopped)
        checkpoint = load_checkpoint(path)
        torch.save(checkpoint | {"counters": written_before(checkpoint["counters"])}, path)
    assert main(["resume", str(stopped)]) == 0
    assert_runs_end_alike(straight, stopped, states)
