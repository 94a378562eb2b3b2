"""runs/<sweep>/sweep.json: what a re-run of the sweep needs to skip the finished trials and resume the others."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from shared.atomic import atomic_write_text
from shared.cli.sweep.spec import SweepSpec
from shared.cli.sweep.trials import Trial
from shared.errors import ConfigError, PixlabError

STATE_FORMAT = 1
TRIAL_KEYS = ("key", "params", "seed", "status", "attempts", "run_dir", "errors", "wall_time", "overrides")
STATUSES = ("pending", "running", "done", "failed", "interrupted", "pruned")


class SweepState:
    """runs/<sweep>/sweep.json: the spec's fingerprint and every trial's record. Written atomically."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data
        self.ids: list[str] = []  # this invocation's trials, in the spec's order
        self.lock = None  # the open lock file, held while this process coordinates the sweep

    @classmethod
    def open(cls, spec: SweepSpec, trials: list[Trial], backend: str) -> "SweepState":
        """Create the sweep folder and its state, or reopen them; a different spec is refused (exit 2)."""
        path = spec.dir / "sweep.json"
        if path.exists():
            data = read_state(path)
            old, new = data.get("fingerprint") or {}, spec.fingerprint()
            if old != new:
                changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
                raise ConfigError(
                    f"{path} belongs to a sweep made from a different spec ({', '.join(changed)} changed); "
                    f"give {spec.path} another `name:` or remove {spec.dir}"
                )
        else:
            data = {
                "format": STATE_FORMAT,
                "name": spec.name,
                "spec": str(spec.path),
                "fingerprint": spec.fingerprint(),
                "trials": {},
            }
        data["backend"] = backend
        spec.dir.mkdir(parents=True, exist_ok=True)
        state = cls(path, data)
        state.lock = _lock_folder(spec.dir)
        by_key = {record["key"]: tid for tid, record in data["trials"].items()}
        for trial in trials:
            if trial.key not in by_key:
                by_key[trial.key] = state.add(spec, trial)
        for record in data["trials"].values():
            if record["status"] == "running":  # the coordinator died while it ran: resume it
                record["status"] = "interrupted"
        data["seeds"] = spec.seeds
        state.ids = [by_key[t.key] for t in trials]
        state.save()
        return state

    @property
    def trials(self) -> dict[str, dict]:
        return self.data["trials"]

    def add(self, spec: SweepSpec, trial: Trial, study_trial: Optional[int] = None) -> str:
        """A new pending record for `trial`, its id `t<number>`; `study_trial`: the Optuna trial it reports to,
        which is also its key in a bayes sweep, where two study trials may draw the same parameters."""
        tid = f"t{len(self.trials):03d}"
        point = json.dumps({"study_trial": study_trial, "seed": trial.seed})
        self.trials[tid] = {
            "key": point if spec.method == "bayes" else trial.key,
            "params": trial.params,
            "seed": trial.seed,
            "status": "pending",
            "attempts": 0,
            "run_dir": None,
            "errors": [],
            "wall_time": None,
            "overrides": trial.overrides(spec, tid),
        }
        if study_trial is not None:
            self.trials[tid]["study_trial"] = study_trial
        return tid

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2))

    def counts(self, ids: Sequence[str]) -> Counter:
        return Counter(self.trials[i]["status"] for i in ids)


def read_state(path: Path) -> dict:
    """The contents of a sweep.json, checked: a damaged one is a ConfigError (exit 2) that says what is wrong."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        problem = f"is not UTF-8 text ({e.reason} at byte {e.start})"
    except ValueError as e:
        problem = f"is not valid JSON ({e})"
    else:
        problem = _state_problem(data)
    if problem:
        raise ConfigError(
            f"{path} {problem}; move it away and run the sweep again: each trial whose run folder exists "
            "continues from its latest checkpoint"
        )
    return data


def _state_problem(data) -> str:
    """What keeps `data` from being a sweep state written by `SweepState.save`, or ""."""
    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not the sweep's state (an object)"
    if data.get("format") != STATE_FORMAT:
        return f"has format {data.get('format')!r}; this pixlab reads format {STATE_FORMAT}"
    if not isinstance(data.get("trials"), dict) or "fingerprint" not in data:
        return "lacks the key 'trials' or 'fingerprint'"
    for tid, record in data["trials"].items():
        missing = [k for k in TRIAL_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            return f"trial {tid} lacks the key(s) {', '.join(missing)}"
        if record["status"] not in STATUSES:
            return f"trial {tid} has status {record['status']!r}; valid: {', '.join(STATUSES)}"
    return ""


def _lock_folder(folder: Path):
    """Hold an exclusive lock on folder/.lock for this process's life: one coordinator per sweep."""
    handle = open(folder / ".lock", "w")
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no fcntl (Windows): no lock
        pass
    except OSError:
        handle.close()
        raise PixlabError(
            f"another `pixlab sweep` is running the sweep in {folder}; wait for it, or stop it first"
        ) from None
    return handle


def find_run_dir(sweep_dir: Path, run_name: str) -> Optional[Path]:
    """The run folder `pixlab train` made for a trial: runs/<sweep>/<date>-<time>-<run name>."""
    pattern = re.compile(r"\d{8}-\d{6}-" + re.escape(run_name) + r"(-\d+)?")
    found = sorted(p for p in sweep_dir.iterdir() if pattern.fullmatch(p.name) and (p / "config.yaml").exists())
    return found[-1] if found else None


@dataclass
class SweepResult:
    status: int  # the exit status of `pixlab sweep`
    dir: Path
    trials: list[dict]  # this invocation's trial records, in the spec's order, each with its "id"
