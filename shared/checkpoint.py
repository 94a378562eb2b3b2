"""Checkpoint files: checkpoints/step-<step>.pt, read with torch.load(weights_only=True).

A checkpoint is a dict {"format", "step", "counters", "rng", "state"}: the state dicts of the run's objects,
the algorithm's counters and every RNG state. A file that carries any pickled object other than tensors and
plain containers is refused, and nothing in it runs. A file that cannot be read to its end (a disk that
filled, a copy cut short) is damaged: a resume passes over it to the newest intact one.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from shared.errors import CheckpointError, DamagedCheckpointError

CHECKPOINT_FORMAT = 1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step-*.pt"))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with weights_only=True. A pickle payload is refused (CheckpointError); a torn or
    truncated file raises DamagedCheckpointError."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as e:  # the weights-only unpickler met something it will not build
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it is not a plain pixlab checkpoint of tensors and "
            f"containers (torch.load with weights_only=True said: {_first_line(e)}). Nothing in it was run."
        ) from None
    except Exception as e:  # torch raises RuntimeError, EOFError or OSError for a file cut short
        raise DamagedCheckpointError(f"checkpoint {path} is damaged (truncated or torn): {_first_line(e)}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pixlab checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return checkpoint


def load_latest(run_dir: Path, map_location: Any = "cpu") -> Optional[tuple[Path, dict]]:
    """(path, checkpoint) of the run's newest intact checkpoint, or None when it has none. Damaged ones are
    passed over, each named on stderr; a refused one (a pickle payload) stops the search with its error."""
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            checkpoint = load_checkpoint(path, map_location)
        except DamagedCheckpointError as e:
            print(f"pixlab: {e}; trying the one before it", file=sys.stderr)
            damaged.append(path.name)
            continue
        if damaged:
            print(f"pixlab: using {path}, the newest intact checkpoint", file=sys.stderr)
        return path, checkpoint
    if damaged:
        raise DamagedCheckpointError(f"every checkpoint of {run_dir} is damaged: {', '.join(damaged)}")
    return None


def first_non_finite(state: Any, prefix: str = "") -> Optional[str]:
    """The dotted name of the first floating-point tensor in `state` (nested dicts and lists) that holds a NaN or
    an infinity, or None when all are finite. Plain floats are left alone: a plateau schedule's "best so far"
    starts at infinity."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    elif isinstance(state, torch.Tensor) and state.is_floating_point():
        return None if bool(torch.isfinite(state).all()) else prefix
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
