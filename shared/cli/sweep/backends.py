"""Where the attempts of trials run, behind one small interface (start, wait, signal): processes on this
machine (`LocalPool`) or Slurm jobs through submitit (`SlurmPool`). `stop` ends one trial early (the pruner's
verdict): it gets SIGTERM, checkpoints and exits like a trial stopped by hand."""

from __future__ import annotations

import datetime as _dt
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from signal import SIGTERM
from typing import Any, Callable, Optional, Sequence

from shared.errors import PixlabError

# A trial's outcome as its worker reports it: exit status, error text (a traceback), and whether another
# attempt could help (not for a PixlabError: bad input or a diverged loss fails again the same way).
Outcome = dict
TrialFunction = Callable[[str, Sequence[str], Optional[str]], int]  # (config, overrides, run_dir) -> status


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs for one attempt: picklable, so it crosses to a spawned process or a Slurm job."""

    config: str
    overrides: tuple
    run_dir: Optional[str]  # set: resume this folder (an interrupted or crashed attempt left it)
    log: str
    threads: int


def execute_trial(trial_fn: TrialFunction, job: TrialJob) -> Outcome:
    """Run one attempt in this (worker) process, its output appended to the trial's log; never raises."""
    os.environ["OMP_NUM_THREADS"] = str(job.threads)
    import torch

    torch.set_num_threads(job.threads)
    with open(job.log, "a", buffering=1) as log:
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        print(
            f"--- {_dt.datetime.now().isoformat(timespec='seconds')}: {'resume ' + job.run_dir if job.run_dir else 'train'}",
            flush=True,
        )
        try:
            return {"status": int(trial_fn(job.config, list(job.overrides), job.run_dir)), "error": None, "retry": True}
        except PixlabError as e:
            print(f"pixlab: error: {e}", file=sys.stderr)
            return {"status": e.exit_code, "error": f"{type(e).__name__}: {e}", "retry": False}
        except BaseException:  # the trial's crash is the sweep's data, not the sweep's end
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            return {"status": 1, "error": text, "retry": True}
        finally:
            sys.stdout.flush(), sys.stderr.flush()


def _local_worker(trial_fn: TrialFunction, job: TrialJob, conn) -> None:
    os.setpgrp()  # the terminal's Ctrl-C reaches the coordinator alone, which passes it on exactly once
    conn.send(execute_trial(trial_fn, job))
    conn.close()


class LocalPool:
    """Trials as processes on this machine, one per attempt (a clean torch and RNG state each). They are
    forked from a forkserver that imported torch and the trial function's module once, which saves the
    seconds of importing torch per trial; where there is no forkserver (Windows) they are spawned."""

    def __init__(self, trial_fn: TrialFunction):
        self.trial_fn = trial_fn
        if "forkserver" in multiprocessing.get_all_start_methods():
            self.context = multiprocessing.get_context("forkserver")
            self.context.set_forkserver_preload(["torch", trial_fn.__module__])
        else:
            self.context = multiprocessing.get_context("spawn")
        self.running: dict[str, tuple] = {}  # trial id -> (process, receiving end, outcome or None)

    def start(self, trial_id: str, job: TrialJob) -> None:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_local_worker, args=(self.trial_fn, job, send), name=f"pixlab-{trial_id}")
        process.start()
        send.close()
        self.running[trial_id] = (process, receive, None)

    def wait(self, timeout: float) -> list[tuple[str, Outcome]]:
        """Outcomes of the attempts that ended within `timeout` seconds."""
        handles = [h for p, conn, _ in self.running.values() for h in (p.sentinel, conn) if not conn.closed]
        wait_for(handles, timeout)
        ended = []
        for tid, (process, conn, outcome) in list(self.running.items()):
            if outcome is None and not conn.closed and conn.poll():
                try:
                    outcome = conn.recv()
                except EOFError:
                    conn.close()
                self.running[tid] = (process, conn, outcome)
            if process.exitcode is None:
                continue
            process.join()
            if outcome is None:
                code = process.exitcode
                why = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                outcome = {
                    "status": 128 - code if code < 0 else code or 1,
                    "error": f"the trial's process ended ({why}) before it reported",
                    "retry": True,
                }
            if not conn.closed:
                conn.close()
            del self.running[tid]
            ended.append((tid, outcome))
        return ended

    def signal(self, signum: int) -> None:
        for trial_id in self.running:
            self.stop(trial_id, signum)

    def stop(self, trial_id: str, signum: int = SIGTERM) -> None:
        process = self.running[trial_id][0]
        if process.exitcode is None:
            os.kill(process.pid, signum)


class SlurmPool:
    """The same attempts as Slurm jobs through submitit; `cluster: local` is submitit's local executor."""

    def __init__(self, trial_fn: TrialFunction, folder: Path, slurm: dict, name: str):
        import submitit

        self.trial_fn, self.cluster = trial_fn, slurm.get("cluster", "slurm")
        self.executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        wanted = {
            "name": name,
            "timeout_min": slurm.get("time"),
            "slurm_partition": slurm.get("partition"),
            "gpus_per_node": slurm.get("gpus"),
            "cpus_per_task": slurm.get("cpus"),
            "mem_gb": slurm.get("mem_gb"),
        }
        self.executor.update_parameters(**{k: v for k, v in wanted.items() if v is not None})
        self.running: dict[str, Any] = {}

    def start(self, trial_id: str, job: TrialJob) -> None:
        self.running[trial_id] = self.executor.submit(execute_trial, self.trial_fn, job)

    def wait(self, timeout: float) -> list[tuple[str, Outcome]]:
        deadline = time.monotonic() + timeout
        while True:
            finished = [tid for tid, job in self.running.items() if job.done()]
            if finished or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, timeout))
        ended = []
        for tid in finished:
            job = self.running.pop(tid)
            try:
                ended.append((tid, job.result()))
            except Exception as e:  # the job itself died: timeout, preemption, out of memory, node failure
                ended.append((tid, {"status": 1, "error": f"job {job.job_id}: {type(e).__name__}: {e}", "retry": True}))
        return ended

    def signal(self, signum: int) -> None:
        if self.cluster == "slurm":  # scancel sends SIGTERM first: the trials checkpoint
            for job in self.running.values():
                job.cancel(check=False)

    def stop(self, trial_id: str, signum: int = SIGTERM) -> None:
        """Cancel one job: scancel's SIGTERM on Slurm, SIGINT from submitit's local executor; both checkpoint."""
        self.running[trial_id].cancel(check=False)
