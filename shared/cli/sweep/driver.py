"""`run_sweep`: check the trials, open the state, and drive a backend: start trials while there is room (asking
the study for new ones in a bayes sweep), record each outcome, retry crashes, stop the trials the pruner gives up
on, pass signals on, show progress."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import shutil
import signal
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Optional

from shared.cli.sweep.backends import LocalPool, SlurmPool, TrialFunction, TrialJob
from shared.cli.sweep.search import Search, check_search, final_value
from shared.cli.sweep.spec import SweepSpec
from shared.cli.sweep.state import SweepResult, SweepState, find_run_dir
from shared.cli.sweep.trials import check_trials, expand, override_text
from shared.cli.sweep.wandb_backend import run_wandb
from shared.errors import ConfigError

BACKENDS = ("local", "slurm", "wandb")


def run_sweep(
    spec: SweepSpec,
    trial_fn: TrialFunction,
    backend: str = "local",
    workers: int = 1,
    retries: Optional[int] = None,
    threads: int = 1,
    out=None,
    pool=None,
) -> SweepResult:
    """Check the spec's trials, then run those not finished yet on `backend`; see the module docstring.
    `pool`: a backend object (start, wait, signal, stop) to use instead of `backend`'s, as the tests do."""
    out = out or sys.stderr
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not a valid choice; valid choices: {', '.join(BACKENDS)}")
    if workers < 1 or threads < 1 or (retries is not None and retries < 0):
        raise ConfigError(
            f"--workers and --threads must be >= 1 and --retries >= 0, got {workers}, {threads} and {retries}"
        )
    for note in spec.notes:
        print(f"pixlab: {note}", file=out)
    if backend == "wandb":
        return run_wandb(spec, trial_fn, workers, out)
    trials = [] if spec.method == "bayes" else expand(spec)  # bayes: the study asks for them as it goes
    check_trials(spec, trials)
    if spec.uses_study:
        check_search(spec)
    if backend == "slurm":
        _check_slurm(spec)
    state = SweepState.open(spec, trials, backend)
    progress = Progress(spec.name, out)
    try:
        search = Search(spec, state, progress.event) if spec.uses_study else None
        if pool is None:
            pool = (
                LocalPool(trial_fn)
                if backend == "local"
                else SlurmPool(trial_fn, spec.dir / "slurm", spec.slurm, spec.name)
            )
        how_many = (
            f"up to {spec.run_cap * len(spec.seeds)} trials (run_cap {spec.run_cap} x {len(spec.seeds)} seeds)"
            if spec.method == "bayes"
            else f"{len(trials)} trials"
        )
        print(f"pixlab: sweep {spec.name}: {how_many} in {spec.dir} ({backend}, {workers} at a time)", file=out)
        status = _drive(
            spec, state, pool, search, workers, spec.retries if retries is None else retries, threads, progress
        )
        if search:
            search.close()
    finally:
        state.lock.close()
    records = [{"id": tid} | state.trials[tid] for tid in state.ids]
    print(summary_table(records, spec.metric), file=out)
    return SweepResult(status, spec.dir, records)


def _check_slurm(spec: SweepSpec) -> None:
    if spec.slurm.get("cluster", "slurm") == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            f"{spec.path}: --backend slurm, but this machine has no Slurm (sbatch not found); "
            "`slurm: {cluster: local}` runs the same submission path here, through submitit's local executor"
        )


def _drive(
    spec: SweepSpec,
    state: SweepState,
    pool,
    search: Optional[Search],
    workers: int,
    retries: int,
    threads: int,
    progress: "Progress",
) -> int:
    """Start trials while there is room, record each outcome, retry crashes, prune, stop on a signal."""
    # A re-run gives failed trials their retries again, except in a bayes sweep: its study was told, and it
    # asks a new point instead.
    final = ("done", "pruned", "failed") if spec.method == "bayes" else ("done", "pruned")
    queue = deque(tid for tid in state.ids if state.trials[tid]["status"] not in final)
    tries: Counter = Counter()  # attempts in this invocation
    started: dict[str, float] = {}
    stopping: set[str] = set()  # trials the pruner stopped, until their process ends
    durations: list[float] = []
    with _passing_signals_to(pool) as stop:
        while ((queue or (search and search.remaining())) and stop.signum is None) or started:
            while len(started) < workers and stop.signum is None:
                if not queue and search:
                    queue.extend(search.ask())
                if not queue:
                    break
                tid = queue.popleft()
                record = state.trials[tid]
                if record["status"] == "pruned":  # its point was pruned while it waited
                    continue
                if search:
                    search.starting(tid)
                run_dir = find_run_dir(spec.dir, f"{spec.name}-{tid}")
                record.update(
                    status="running", attempts=record["attempts"] + 1, run_dir=str(run_dir) if run_dir else None
                )
                state.save()
                log = spec.dir / f"{tid}.log"
                pool.start(
                    tid, TrialJob(str(spec.config), tuple(record["overrides"]), record["run_dir"], str(log), threads)
                )
                started[tid] = time.monotonic()
                tries[tid] += 1
            for tid, outcome in pool.wait(timeout=1.0):
                seconds = time.monotonic() - started.pop(tid)
                record = state.trials[tid]
                run_dir = find_run_dir(spec.dir, f"{spec.name}-{tid}")
                record["run_dir"] = str(run_dir) if run_dir else None
                if tid in stopping:  # whatever its exit status: SIGTERM's 143, or 0 if it was just ending
                    stopping.discard(tid)
                    record["status"] = "pruned"
                    record["wall_time"] = _run_wall_time(run_dir)
                elif outcome["status"] == 0 and outcome["error"] is None:
                    record["status"] = "done"
                    record["wall_time"] = _run_wall_time(run_dir)
                    durations.append(seconds)
                elif stop.signum is not None:
                    record["status"] = "interrupted"
                else:
                    error = outcome["error"] or f"exit status {outcome['status']}"
                    record["errors"].append(
                        {
                            "attempt": record["attempts"],
                            "time": _dt.datetime.now().isoformat(timespec="seconds"),
                            "error": error,
                        }
                    )
                    again = outcome["retry"] and tries[tid] <= retries
                    record["status"] = "pending" if again else "failed"
                    last = error.strip().splitlines()[-1]
                    progress.event(
                        f"{tid} failed (attempt {record['attempts']}): {last}; "
                        + (
                            "retrying" + (" from its checkpoint" if run_dir else "")
                            if again
                            else f"giving up, see {spec.dir / (tid + '.log')}"
                        )
                    )
                    if again:
                        queue.append(tid)
                state.save()
                if search and record["status"] in ("done", "failed", "pruned"):
                    search.ended(tid)
            if search and stop.signum is None:
                pruned = search.observe([t for t in started if t not in stopping])
                for tid in pruned:
                    pool.stop(tid)
                    stopping.add(tid)
                if pruned:
                    state.save()
            pending = len(queue) + (search.remaining() if search else 0)
            progress.show(state.counts(state.ids), _eta(durations, started, pending, workers))
    progress.close()
    counts = state.counts(state.ids)
    if stop.signum is not None:
        print(
            f"pixlab: sweep stopped by signal {stop.signum}; run the same command again to resume it", file=progress.out
        )
        return 128 + stop.signum
    return 1 if counts["failed"] else 0


def _run_wall_time(run_dir: Optional[Path]) -> Optional[float]:
    try:
        return json.loads((Path(run_dir) / "meta.json").read_text()).get("wall_time")
    except (OSError, TypeError, ValueError):
        return None


def _eta(durations: list[float], started: dict[str, float], pending: int, workers: int) -> Optional[float]:
    """Seconds left, from the mean duration of the trials finished in this invocation."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    now = time.monotonic()
    left = sum(max(mean - (now - t), 0.0) for t in started.values()) + pending * mean
    return left / workers


class _Stop:
    signum: Optional[int] = None


@contextlib.contextmanager
def _passing_signals_to(pool):
    """SIGINT/SIGTERM: remember the first, and pass each one on to the running trials (which checkpoint)."""
    stop = _Stop()

    def handler(signum, frame):
        stop.signum = stop.signum or signum
        pool.signal(signum)

    old = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            old[signum] = signal.signal(signum, handler)
    try:
        yield stop
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


class Progress:
    """Trials done, running, failed and pending, with an ETA: one rewritten line in a terminal, else a line per change."""

    def __init__(self, name: str, out=None):
        self.name, self.out = name, out or sys.stderr
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.last = ""

    def show(self, counts: Counter, eta: Optional[float]) -> None:
        done, running, failed = counts["done"], counts["running"], counts["failed"]
        pending = counts["pending"] + counts["interrupted"]
        pruned = f", {counts['pruned']} pruned" if counts["pruned"] else ""
        line = f"sweep {self.name}: {done} done{pruned}, {running} running, {failed} failed, {pending} pending"
        if self.tty:
            when = "ETA --" if eta is None else f"ETA {_duration(eta)}"
            self.out.write(f"\r{line}, {when}\x1b[K")
            self.out.flush()
        elif line != self.last:
            print(line + ("" if eta is None else f", ETA {_duration(eta)}"), file=self.out, flush=True)
        self.last = line

    def event(self, message: str) -> None:
        print(("\r\x1b[K" if self.tty else "") + f"pixlab: {message}", file=self.out, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=self.out)


def _duration(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


def summary_table(records: list[dict], metric: Optional[dict]) -> str:
    """One line per trial: id, status, seed, parameters, the spec's metric (its summary value, else its last logged
    one; for a pruned trial, where it stopped), run folder."""
    lines = []
    for r in records:
        value = final_value(r["run_dir"], metric["name"]) if metric and r["status"] in ("done", "pruned") else None
        shown = "" if value is None else f"  {metric['name']}={value:.6g}"
        params = " ".join(f"{k}={override_text(v)}" for k, v in r["params"].items())
        seed = "" if r["seed"] is None else f"  seed={r['seed']}"
        lines.append(f"  {r['id']}  {r['status']:<11}{seed}  {params}{shown}  {r['run_dir'] or ''}".rstrip())
    return "\n".join(lines)
