"""A run: its folder under runs/, seeding, checkpoints, resume and signal handling.

    runs/<YYYYmmdd>-<HHMMSS>-<name>/
        config.yaml      the resolved config; `pixlab resume` reads it back
        meta.json        git commit and dirty flag, package versions, device, command line, seed, resumes
        metrics.jsonl    one JSON record per line (shared/tracking.py)
        checkpoints/     step-<step>.pt, written atomically, the last `checkpoint.keep_last` kept
        media/           image grids, videos
        wandb/           the W&B run, when W&B is on

An algorithm sees a `Run` only through: `run.device`, `run.log(...)`, `run.restore(objects)`,
`run.save(step, objects, counters)`, `run.should_stop` and `run.check_finite(...)`. Checkpoints hold
the state dicts of the objects, the algorithm's counters and every RNG state, so a resumed run on CPU
continues bit for bit. They are read with `torch.load(weights_only=True)`: a file that carries any
pickled object other than tensors and plain containers is refused, and nothing in it runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch

from shared.config import to_dict, to_yaml
from shared.errors import CheckpointError, NonFiniteLossError, PixlabError
from shared.tracking import Tracker
from shared.train.device import select_device
from shared.train.distributed import Distributed

CHECKPOINT_FORMAT = 1
PACKAGES = ("torch", "numpy", "gymnasium", "ale-py", "wandb", "omegaconf", "pixlab")


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


class Run:
    """A run folder with its tracker, checkpoints and signal handling. Use it as a context manager."""

    def __init__(self, cfg: Any, directory: Path, meta: dict, fresh: bool, dist: Distributed = Distributed()):
        self.cfg = cfg
        self.dir = Path(directory)
        self.meta = meta
        self.fresh = fresh
        self.dist = dist
        self.device = dist.device(select_device(cfg.device))
        self.stop_signal: Optional[int] = None
        self._saved_any = False
        self._old_handlers: dict[int, Any] = {}
        self.tracker = Tracker(
            self.dir,
            cfg.tracking,
            to_dict(cfg),
            name=self.dir.name,
            wandb_id=meta.get("wandb_id"),
            time_offset=meta.get("wall_time", 0.0),
        )
        if self.tracker.wandb_id and meta.get("wandb_id") != self.tracker.wandb_id:
            self.meta["wandb_id"] = self.tracker.wandb_id
            self._write_meta()

    # ----------------------------------------------------------------- making and reopening
    @classmethod
    def create(cls, cfg: Any, argv: Optional[list[str]] = None, dist: Distributed = Distributed()) -> "Run":
        """Make a new run folder for `cfg` (already validated) and seed python, numpy and torch."""
        device = select_device(cfg.device)  # fail on a missing device before anything is written
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        root = Path(cfg.runs_dir)
        directory = root / f"{stamp}-{cfg.name}"
        suffix = 1
        while directory.exists():
            directory = root / f"{stamp}-{cfg.name}-{suffix}"
            suffix += 1
        (directory / "checkpoints").mkdir(parents=True)
        (directory / "media").mkdir()
        atomic_write_text(directory / "config.yaml", to_yaml(cfg))
        meta = {
            "name": cfg.name,
            "algo": cfg.algo,
            "seed": cfg.seed,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": list(sys.argv if argv is None else argv),
            "cwd": os.getcwd(),
            "git": git_state(),
            "device": describe_device(device),
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "packages": package_versions(),
            "world_size": dist.world_size,
            "resumes": [],
        }
        atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2))
        seed_everything(cfg.seed)
        try:
            return cls(cfg, directory, meta, fresh=True, dist=dist)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    @classmethod
    def reopen(cls, cfg: Any, directory: Path, argv: Optional[list[str]] = None, dist: Distributed = Distributed()) -> "Run":
        """Open an existing run folder to continue it; `restore` then loads its latest checkpoint."""
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        meta.setdefault("resumes", []).append(
            {
                "time": _dt.datetime.now().isoformat(timespec="seconds"),
                "command": list(sys.argv if argv is None else argv),
                "from_checkpoint": (latest_checkpoint(directory) or Path("none")).name,
                "git": git_state(),
            }
        )
        atomic_write_text(directory / "meta.json", json.dumps(meta, indent=2))
        seed_everything(cfg.seed)
        return cls(cfg, directory, meta, fresh=False, dist=dist)

    # ----------------------------------------------------------------- what an algorithm calls
    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.tracker.log(metrics, step)

    def log_images(self, key: str, images: torch.Tensor, step: int, nrow: int = 8) -> Path:
        return self.tracker.log_images(key, images, step, nrow)

    def log_video(self, key: str, path: Path, step: int) -> None:
        self.tracker.log_video(key, path, step)

    def summary(self, values: dict[str, Any]) -> None:
        self.tracker.summary(values)

    @property
    def should_stop(self) -> bool:
        """True once SIGINT or SIGTERM arrived: save a checkpoint and return from train()."""
        return self.stop_signal is not None

    def check_finite(self, name: str, value: float, step: int) -> None:
        """Stop the run with a clear message when a loss is NaN or infinite; checkpoints stay as they are."""
        if not math.isfinite(value):
            last = latest_checkpoint(self.dir) if self.dir is not None else None  # a follower rank may have none
            raise NonFiniteLossError(
                f"{name} is {value} at step {step}: training diverged and was stopped. "
                f"The run folder {self.dir} is kept; its last good checkpoint is "
                f"{last if last else 'none (nothing was saved before the divergence)'}. "
                "Lower the learning rate or clip gradients, then start again."
            )

    def save(self, step: int, objects: dict[str, Stateful], counters: Optional[dict] = None) -> Path:
        """Write checkpoints/step-<step>.pt atomically with the objects' states, counters and RNG states."""
        path = self.dir / "checkpoints" / f"step-{step:09d}.pt"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": int(step),
            "counters": dict(counters or {}),
            "rng": capture_rng(),
            "state": {name: obj.state_dict() for name, obj in objects.items()},
        }
        atomic_torch_save(payload, path)
        self._saved_any = True
        self.meta["wall_time"] = self.tracker.wall_time()
        self._write_meta()
        for old in list_checkpoints(self.dir)[: -self.cfg.checkpoint.keep_last]:
            old.unlink()
        return path

    def restore(self, objects: dict[str, Stateful]) -> Optional[dict]:
        """Load the latest checkpoint into `objects` and the RNGs; return {'step': ..., **counters} or None."""
        counters = restore_latest(self.dir, objects, self.device)
        self.tracker.truncate_after(counters["step"] if counters else -1)  # a resume from nothing starts over
        return counters

    # ----------------------------------------------------------------- context manager
    def __enter__(self) -> "Run":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                pass
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self.meta["wall_time"] = self.tracker.wall_time()
        self._write_meta()
        self.tracker.close(exit_code=0 if exc is None else 1)
        bad_input = isinstance(exc, PixlabError) and exc.exit_code == 2
        if bad_input and self.fresh and not self._saved_any:
            shutil.rmtree(self.dir, ignore_errors=True)  # nothing of value was written: leave no half run

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C: the user does not want to wait for the save
            raise KeyboardInterrupt
        self.stop_signal = signum

    def _write_meta(self) -> None:
        atomic_write_text(self.dir / "meta.json", json.dumps(self.meta, indent=2))


class FollowerRun(Run):
    """A rank other than 0 under torchrun: trains in step with rank 0, reads checkpoints, writes nothing."""

    def __init__(self, cfg: Any, dist: Distributed, directory: Optional[Path] = None):
        self.cfg, self.dist, self.dir = cfg, dist, directory
        self.device = dist.device(select_device(cfg.device))
        self.fresh, self.stop_signal, self._old_handlers = False, None, {}
        seed_everything(cfg.seed)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def log_images(self, key: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        pass

    def log_video(self, key: str, path: Path, step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def save(self, step: int, objects: dict[str, Stateful], counters: Optional[dict] = None) -> None:
        pass

    def restore(self, objects: dict[str, Stateful]) -> Optional[dict]:
        return restore_latest(self.dir, objects, self.device) if self.dir is not None else None

    def __exit__(self, exc_type, exc, tb) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)


def restore_latest(run_dir: Path, objects: dict[str, Stateful], device: torch.device) -> Optional[dict]:
    """Load the run's latest checkpoint into `objects` and the RNGs; {'step': ..., **counters} or None."""
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    checkpoint = load_checkpoint(path, map_location=device)
    missing = sorted(set(objects) - set(checkpoint["state"]))
    if missing:
        raise CheckpointError(f"{path} has no state for {missing}; it holds {sorted(checkpoint['state'])}")
    for name, obj in objects.items():
        obj.load_state_dict(checkpoint["state"][name])
    restore_rng(checkpoint["rng"])
    return {"step": checkpoint["step"], **checkpoint["counters"]}


# --------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted((Path(run_dir) / "checkpoints").glob("step-*.pt"))


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save to a temporary file in the same folder, fsync it, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint with weights_only=True; a pickle payload is refused with a CheckpointError."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError for a torn file)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it is not a plain pixlab checkpoint of tensors and "
            f"containers (torch.load with weights_only=True said: {reason}). Nothing in it was run."
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pixlab checkpoint (format {CHECKPOINT_FORMAT} expected)")
    return checkpoint


# --------------------------------------------------------------------- seeding and RNG state
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """Every global RNG state, as tensors and plain containers (loadable with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------- provenance
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
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe_device(device: torch.device) -> dict:
    info = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    else:
        info["processor"] = platform.processor() or platform.machine()
    return info


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
