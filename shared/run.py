"""A run: its folder under runs/, its lock, seeding, checkpoints, resume and signal handling.

    runs/<YYYYmmdd>-<HHMMSS>-<name>/
        config.yaml      the resolved config; `pixlab resume` reads it back
        meta.json        git commit and dirty flag, package versions, device, command line, seed, resumes
        metrics.jsonl    one JSON record per line (shared/tracking.py)
        checkpoints/     step-<step>.pt (shared/checkpoint.py), written atomically, the last `checkpoint.keep_last` kept
        media/           image grids, videos
        wandb/           the W&B run, when W&B is on
        .lock            flock-ed by the one process that writes the run, and holding its PID

A folder is filled under a temporary name and renamed into place once config.yaml and meta.json are in it,
so a run folder is whole or absent. One process writes a run at a time: a second one is refused, naming
the first; the kernel drops the lock of a process that died, so a later resume takes it over.

An algorithm sees a `Run` only through: `run.device`, `run.log(...)`, `run.restore(objects)` (once),
`run.save(step, objects, counters)`, `run.should_stop` and `run.check_finite(...)`. Checkpoints hold the
state dicts of the objects, the algorithm's counters and every RNG state (shared/rng.py), so a resumed run
on CPU continues bit for bit. A run never ends well with a NaN or an infinity: a non-finite metric, or
non-finite weights at a save, stop it with exit status 1, naming its last checkpoint (whose weights are
then finite, since none other is written). Under torchrun, ranks other than 0 train in step with rank 0,
read its checkpoints and write nothing.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import itertools
import json
import math
import os
import platform
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np
import torch

from shared.atomic import atomic_torch_save, atomic_write_text, fsync_dir, remove_temporaries, temporary_name
from shared.checkpoint import (
    CHECKPOINT_FORMAT,
    first_non_finite,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,  # noqa: F401  (trainers and tests import it from here)
    load_latest,
)
from shared.config import to_dict, to_yaml
from shared.errors import CheckpointError, NonFiniteLossError, PixlabError, RunFolderError
from shared.provenance import describe_device, git_state, package_versions
from shared.rng import capture_rng, restore_rng, seed_everything
from shared.tracking import Tracker
from shared.train.device import select_device
from shared.train.distributed import Distributed


class Stateful(Protocol):
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> Any: ...


class Run:
    """A run folder with its tracker, checkpoints and signal handling. Use it as a context manager."""

    def __init__(
        self,
        cfg: Any,
        directory: Optional[Path],
        meta: dict,
        fresh: bool,
        dist: Distributed = Distributed(),
        lock: Optional[RunLock] = None,
        checkpoint: Optional[tuple[Path, dict]] = None,
        resume: Optional[dict] = None,
    ):
        self.cfg = cfg
        self.dir = None if directory is None else Path(directory)  # None: a rank > 0 of a new run
        self.meta = meta
        self.fresh = fresh
        self.dist = dist
        self.device = dist.device(select_device(cfg.device))
        self.stop_signal: Optional[int] = None
        self._lock = lock
        self._checkpoint = checkpoint  # (path, contents) that `restore` loads
        self._resume = resume  # the meta.json entry of this resume, written once `restore` succeeds
        self._saved_any = False
        self._old_handlers: dict[int, Any] = {}
        if not dist.is_main:
            self.tracker = NullTracker()
            return
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
        """Make a new run folder for `cfg` (already validated), lock it, and seed python, numpy and torch."""
        device = select_device(cfg.device)  # fail on a missing device before anything is written
        if not dist.is_main:
            seed_everything(cfg.seed)
            return cls(cfg, None, {}, fresh=True, dist=dist)
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
        directory, lock = _make_folder(cfg, meta)
        seed_everything(cfg.seed)
        try:
            return cls(cfg, directory, meta, fresh=True, dist=dist, lock=lock)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            lock.release()
            raise

    @classmethod
    def reopen(
        cls, cfg: Any, directory: Path, argv: Optional[list[str]] = None, dist: Distributed = Distributed()
    ) -> "Run":
        """Open an existing run folder to continue it from its newest intact checkpoint (`restore` loads it).

        Everything that can refuse the resume (the lock, meta.json, metrics.jsonl, the checkpoint) is read
        here, before the tracker opens; the resume is recorded in meta.json only once `restore` succeeds.
        """
        directory = Path(directory)
        device = dist.device(select_device(cfg.device))
        if not dist.is_main:
            seed_everything(cfg.seed)
            return cls(cfg, directory, {}, fresh=False, dist=dist, checkpoint=load_latest(directory, device))
        lock = RunLock(directory)
        try:
            meta = _read_meta(directory)
            _check_metrics_text(directory / "metrics.jsonl")
            for leftover in remove_temporaries(directory) + remove_temporaries(directory / "checkpoints"):
                print(f"pixlab: removed {leftover}, a write cut short by a kill", file=sys.stderr)
            found = load_latest(directory, device)
            if found is None:
                print(f"pixlab: {directory} has no checkpoint yet; starting it from step 0", file=sys.stderr)
            resume = {
                "time": _dt.datetime.now().isoformat(timespec="seconds"),
                "command": list(sys.argv if argv is None else argv),
                "from_checkpoint": found[0].name if found else "none",
                "git": git_state(),
            }
            seed_everything(cfg.seed)
            return cls(cfg, directory, meta, fresh=False, dist=dist, lock=lock, checkpoint=found, resume=resume)
        except BaseException:
            lock.release()
            raise

    # ----------------------------------------------------------------- what an algorithm calls
    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record scalars at a step; a NaN or infinite one is recorded, then stops the run."""
        self.tracker.log(metrics, step)
        self._require_finite(metrics, f"at step {step}")

    def log_images(self, key: str, images: torch.Tensor, step: int, nrow: int = 8) -> Optional[Path]:
        return self.tracker.log_images(key, images, step, nrow)

    def log_video(self, key: str, path: Path, step: int) -> None:
        self.tracker.log_video(key, path, step)

    def summary(self, values: dict[str, Any]) -> None:
        """The run's final numbers; a NaN or infinite one is recorded, then fails the run."""
        self.tracker.summary(values)
        self._require_finite(values, "in the summary")

    @property
    def should_stop(self) -> bool:
        """True once SIGINT or SIGTERM arrived: save a checkpoint and return from train()."""
        return self.stop_signal is not None

    def check_finite(self, name: str, value: float, step: int) -> None:
        """Stop the run with a clear message when a loss is NaN or infinite; checkpoints stay as they are."""
        self._require_finite({name: value}, f"at step {step}")

    def save(self, step: int, objects: dict[str, Stateful], counters: Optional[dict] = None) -> Optional[Path]:
        """Write checkpoints/step-<step>.pt atomically with the objects' states, counters and RNG states.
        Weights that are not finite are never written: the run stops instead."""
        if not self.dist.is_main:
            return None
        state = {name: obj.state_dict() for name, obj in objects.items()}
        bad = first_non_finite(state)
        if bad is not None:
            self._diverged(f"{bad} holds NaN or infinite values at step {step}")
        path = self.dir / "checkpoints" / f"step-{step:09d}.pt"
        payload = {
            "format": CHECKPOINT_FORMAT,
            "step": int(step),
            "counters": dict(counters or {}),
            "rng": capture_rng(),
            "state": state,
        }
        atomic_torch_save(payload, path)
        self._saved_any = True
        self.meta["wall_time"] = self.tracker.wall_time()
        self._write_meta()
        for old in list_checkpoints(self.dir)[: -self.cfg.checkpoint.keep_last]:
            old.unlink()
        return path

    def restore(self, objects: dict[str, Stateful]) -> Optional[dict]:
        """Load the checkpoint `reopen` found into `objects` and the RNGs; {'step': ..., **counters} or None."""
        counters = None
        if self._checkpoint is not None:
            path, checkpoint = self._checkpoint
            self._checkpoint = None  # a replay in it can be gigabytes: do not keep a second copy
            load_states(path, checkpoint, objects)
            restore_rng(checkpoint["rng"])
            counters = {"step": checkpoint["step"], **checkpoint["counters"]}
        self.tracker.truncate_after(counters["step"] if counters else -1)  # a resume from nothing starts over
        if self._resume is not None:
            self.meta.setdefault("resumes", []).append(self._resume)
            self._resume = None
            self._write_meta()
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
        bad_input = isinstance(exc, PixlabError) and exc.exit_code == 2
        if not bad_input:  # a refused resume leaves meta.json as it was
            self.meta["wall_time"] = self.tracker.wall_time()
            self._write_meta()
        self.tracker.close(exit_code=0 if exc is None else 1)
        if bad_input and self.fresh and not self._saved_any and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)  # nothing of value was written: leave no half run
        if self._lock is not None:
            self._lock.release()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # a second Ctrl-C: the user does not want to wait for the save
            raise KeyboardInterrupt
        self.stop_signal = signum

    def _require_finite(self, metrics: dict[str, Any], where: str) -> None:
        bad = [f"{k} is {float(v)}" for k, v in metrics.items() if _is_float(v) and not math.isfinite(float(v))]
        if bad:
            self._diverged(f"{', '.join(bad)} {where}")

    def _diverged(self, what: str) -> None:
        last = latest_checkpoint(self.dir) if self.dir is not None else None  # a rank > 0 of a new run has none
        raise NonFiniteLossError(
            f"{what}: training diverged and was stopped. The run folder {self.dir} is kept; its last checkpoint "
            f"with finite weights is {last if last else 'none (nothing was saved before the divergence)'}. "
            "Lower the learning rate or clip gradients, then start again."
        )

    def _write_meta(self) -> None:
        if self.dist.is_main:
            atomic_write_text(self.dir / "meta.json", json.dumps(self.meta, indent=2))


class NullTracker:
    """The tracker of a rank other than 0 under torchrun: rank 0 records for every rank, so this records nothing."""

    wandb_id = None

    def _nothing(self, *args: Any, **kwargs: Any) -> None:
        return None

    log = log_images = log_video = summary = truncate_after = close = _nothing

    def wall_time(self) -> float:
        return 0.0


class RunLock:
    """An exclusive flock on <run>/.lock, which holds the owner's PID. The kernel drops the lock when its
    process ends, however it ends, so a lock left by a dead process is simply taken over."""

    def __init__(self, directory: Path):
        path = Path(directory) / ".lock"
        try:
            self.fd: Optional[int] = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFolderError(f"cannot open the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            self.release()
            raise RunFolderError(
                f"{directory} is being written by process {holder} (it holds {path}); wait for it to end or stop it"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def load_states(path: Path, checkpoint: dict, objects: dict[str, Stateful]) -> None:
    """Load checkpoint["state"][name] into each object; a checkpoint of another algorithm or shape is refused."""
    missing = sorted(set(objects) - set(checkpoint["state"]))
    if missing:
        raise CheckpointError(f"{path} has no state for {missing}; it holds {sorted(checkpoint['state'])}")
    for name, obj in objects.items():
        try:
            obj.load_state_dict(checkpoint["state"][name])
        except (RuntimeError, ValueError, KeyError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: its {name!r} state does not fit this run's {name} ({reason})") from None


def _make_folder(cfg: Any, meta: dict) -> tuple[Path, RunLock]:
    """<runs_dir>/<stamp>-<name>[-k]/ with checkpoints/, media/, config.yaml and meta.json, locked: filled
    under a temporary name and renamed into place, so that a kill leaves the whole folder or none."""
    root = Path(cfg.runs_dir)
    base = root / f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
    staging, lock = temporary_name(base), None
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_dead_stagings(root)
        (staging / "checkpoints").mkdir(parents=True)
        (staging / "media").mkdir()
        lock = RunLock(staging)
        atomic_write_text(staging / "config.yaml", to_yaml(cfg))
        atomic_write_text(staging / "meta.json", json.dumps(meta, indent=2))
        for suffix in itertools.count():
            directory = base.with_name(f"{base.name}-{suffix}") if suffix else base
            try:
                if not directory.exists():
                    staging.rename(directory)
                    break
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # not: another run took the name meanwhile
                    raise
        fsync_dir(root)
    except BaseException as e:  # a Ctrl-C too: leave nothing behind
        shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            lock.release()
        if isinstance(e, OSError):
            raise RunFolderError(f"cannot make a run folder in runs_dir={str(root)!r}: {e.strerror or e}") from None
        raise
    return directory, lock


def _remove_dead_stagings(root: Path) -> None:
    """Delete the half-made run folders (`.<stamp>-<name>.tmp-<pid>`) of processes killed while making them."""
    for staging in root.glob(".*.tmp-*"):
        pid = staging.name.rsplit("-", 1)[-1]
        if staging.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            print(f"pixlab: removed {staging}, a run folder whose making was cut short by a kill", file=sys.stderr)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read_meta(directory: Path) -> dict:
    path = directory / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{directory} is not a whole run folder: it has no meta.json") from None
    except (OSError, ValueError) as e:
        raise RunFolderError(f"cannot read {path}: {e}") from None
    if not isinstance(meta, dict):
        raise RunFolderError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    return meta


def _check_metrics_text(path: Path) -> None:
    """A resume rewrites metrics.jsonl (dropping what comes after its checkpoint): refuse one it cannot read."""
    try:
        data = path.read_bytes() if path.exists() else b""
        data.decode("utf-8")
    except OSError as e:
        raise RunFolderError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RunFolderError(
            f"{path} line {line} is not UTF-8 text ({e.reason}); repair or delete that line, then resume"
        ) from None


def _is_float(value: Any) -> bool:
    return isinstance(value, (float, np.floating)) or (isinstance(value, torch.Tensor) and value.is_floating_point())
