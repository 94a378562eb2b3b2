"""Sweeps: a W&B sweep YAML -> a list of trials -> a backend that runs them, resumably.

    pixlab sweep configs/sweeps/lenet5_digits_lr.yaml --workers 2
    pixlab sweep SPEC --backend slurm       # the same trials as Slurm jobs, through submitit
    pixlab sweep SPEC --backend wandb       # W&B's sweep server picks the trials (needed for bayes)

The spec is W&B's sweep format, so whoever knows W&B sweeps knows it:

    method: grid                  # grid, random or bayes
    metric: {name: test/error, goal: minimize}
    parameters:
      optim.lr: {values: [0.001, 0.003]}              # a dotted config key, as on the command line
      optim.weight_decay: {distribution: log_uniform_values, min: 1.0e-5, max: 1.0e-2}
      train: {parameters: {batch_size: {value: 64}}}  # W&B's nesting: the key train.batch_size
    run_cap: 8                    # random: how many draws (grid: at most this many combinations)
    config: configs/classify/lenet5_digits.yaml       # pixlab: the base config (cwd, then the repository)
    seeds: 3                      # pixlab: every combination runs with seeds 0, 1, 2 (or a list)
    overrides: [train.epochs=5]   # pixlab: applied to every trial, as on the `pixlab train` command line
    sample_seed: 0                # pixlab: seeds the random draws, so a re-run draws the same trials
    retries: 2                    # pixlab: a crashing trial is tried again up to this many times
    slurm: {partition: gpu, time: 120, gpus: 1, cpus: 8, mem_gb: 32}   # pixlab, --backend slurm

`program` and `command` are accepted and ignored (pixlab runs its own trial function); `early_terminate`
reaches W&B's server only. Distributions: constant, categorical, uniform, int_uniform, q_uniform,
log_uniform (bounds are natural logs, as in W&B), log_uniform_values, q_log_uniform_values, normal and
log_normal; W&B's rule stands that min and max without a distribution mean int_uniform when both are
integers, else uniform.

How it works, top to bottom:
1. `load_spec` reads and checks the whole spec: a misspelled key, a distribution with min > max, bayes
   without W&B's server, each trial's config (loaded exactly as `pixlab train` would load it), all fail
   with exit status 2 before anything is written.
2. `expand` turns it into trials: the grid's product in the order of the spec, or `run_cap` draws from a
   generator seeded by `sample_seed`; each crossed with the seeds. A trial is the base config plus
   key=value overrides, and its own run name `<sweep>-t<index>`.
3. Each trial is a normal run folder in runs/<sweep>/ (config.yaml, meta.json, metrics.jsonl,
   checkpoints/), made by the trial function that shared/cli.py hands in: `pixlab train` with the
   overrides, or `pixlab resume` of the trial's folder when it has one already. shared/ does not know
   the algorithms, the CLI does. `tracking.group` is the sweep's name, so W&B groups the trials.
4. runs/<sweep>/sweep.json holds the sweep's state: each trial's overrides, status (pending, running,
   done, failed, interrupted), attempts and the tracebacks of its failures. Only the coordinating
   process writes it, atomically. Running the same command again skips the finished trials and resumes
   the others from their checkpoints; more seeds add trials, a changed spec is refused.
5. Backends run trials through one small interface (start, wait, signal): `LocalPool`, one process
   per attempt, forked from a forkserver that imported torch once (at most --workers at once, torch
   limited to --threads threads each, output to runs/<sweep>/<trial>.log), and `SlurmPool`, the same
   trial function submitted with submitit (`slurm.cluster: local` runs the same submission path on
   this machine). `run_wandb` registers the sweep with W&B and runs `wandb.agent`s, whose server
   chooses the trials; that backend needs a W&B login and is not exercised by the tests.
6. A crashing trial is recorded with its traceback and retried, from its checkpoint, while the others
   go on; a PixlabError (bad config or data, a diverged loss) is not retried: it would fail again.
   Ctrl-C or SIGTERM is passed once to every running trial, which checkpoints; the sweep then exits
   with 128 + the signal, and the trials are marked interrupted.
7. A progress line shows trials done, running, failed and pending, with an ETA from the trials
   finished so far.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from shared.config import did_you_mean, load_config
from shared.errors import ConfigError, PixlabError
from shared.run import atomic_write_text
from shared.tracking import read_metrics

REPO = Path(__file__).resolve().parent.parent
STATE_FORMAT = 1

WANDB_KEYS = ("method", "parameters", "metric", "name", "description", "program", "command", "early_terminate", "run_cap", "project", "entity")
PIXLAB_KEYS = ("config", "seeds", "overrides", "sample_seed", "retries", "slurm")
METHODS = ("grid", "random", "bayes")
PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "q", "mu", "sigma", "probabilities", "parameters")
BOUNDED = ("uniform", "int_uniform", "q_uniform", "log_uniform", "log_uniform_values", "q_log_uniform_values")
DISTRIBUTIONS = ("constant", "categorical", *BOUNDED, "normal", "log_normal")
SLURM_KEYS = ("cluster", "partition", "time", "gpus", "cpus", "mem_gb")
BACKENDS = ("local", "slurm", "wandb")

# A trial's outcome as its worker reports it: exit status, error text (a traceback), and whether another
# attempt could help (not for a PixlabError: bad input or a diverged loss fails again the same way).
Outcome = dict
TrialFunction = Callable[[str, Sequence[str], Optional[str]], int]  # (config, overrides, run_dir) -> status


# --------------------------------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class Parameter:
    """One swept config key: a list of `values` (grid, categorical, constant) or a `distribution`."""

    key: str
    values: Optional[list] = None
    distribution: Optional[str] = None
    min: Optional[float] = None
    max: Optional[float] = None
    q: Optional[float] = None
    mu: float = 0.0
    sigma: float = 1.0
    probabilities: Optional[list] = None

    def draw(self, rng: random.Random) -> Any:
        """One value from this parameter, with `rng` (random and bayes probes)."""
        d = self.distribution
        if self.values is not None:
            return rng.choices(self.values, weights=self.probabilities)[0] if self.probabilities else rng.choice(self.values)
        if d == "int_uniform":
            return rng.randint(int(self.min), int(self.max))
        if d in ("normal", "log_normal"):
            x = rng.gauss(self.mu, self.sigma)
            return math.exp(x) if d == "log_normal" else x
        if d in ("uniform", "q_uniform"):
            x = rng.uniform(self.min, self.max)
        elif d == "log_uniform":  # W&B: min and max are the natural logs of the bounds
            x = math.exp(rng.uniform(self.min, self.max))
        else:  # log_uniform_values, q_log_uniform_values: the bounds themselves
            x = math.exp(rng.uniform(math.log(self.min), math.log(self.max)))
        if self.q is not None:
            x = round(round(x / self.q) * self.q, 12)
            return int(x) if float(self.q).is_integer() and float(x).is_integer() else x
        return x

    def probe(self) -> Any:
        """A value inside the parameter's range, to check that its key exists before any trial runs."""
        if self.values is not None:
            return self.values[0]
        if self.distribution in ("normal", "log_normal"):
            return math.exp(self.mu) if self.distribution == "log_normal" else self.mu
        return math.exp(self.min) if self.distribution == "log_uniform" else self.min


@dataclass
class SweepSpec:
    """A parsed and checked sweep spec. `wandb` is its W&B part, as W&B's server reads it."""

    path: Path
    name: str
    config: Path
    method: str
    parameters: list[Parameter]
    seeds: list[Optional[int]]  # [None]: each trial keeps the config's own seed
    overrides: list[str] = field(default_factory=list)
    run_cap: Optional[int] = None
    sample_seed: int = 0
    retries: int = 2
    metric: Optional[dict] = None
    slurm: dict = field(default_factory=dict)
    wandb: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was accepted but is ignored, said once at the start
    runs_dir: Path = Path("runs")  # the base config's runs_dir; the sweep lives in runs_dir/<name>

    @property
    def dir(self) -> Path:
        return self.runs_dir / self.name

    def fingerprint(self) -> dict:
        """What makes two specs the same sweep (seeds excluded: more seeds extend a sweep)."""
        return {
            "config": str(self.config),
            "method": self.method,
            "parameters": [asdict(p) for p in self.parameters],
            "overrides": list(self.overrides),
            "run_cap": self.run_cap,
            "sample_seed": self.sample_seed,
        }


def load_spec(path: str | Path) -> SweepSpec:
    """Read a sweep YAML file and check all of it; a ConfigError (exit 2) names the file, key and value."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read sweep spec {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    return parse_spec(raw, path)


def parse_spec(raw: Any, path: Path) -> SweepSpec:
    """Check a sweep spec (the mapping of a YAML file at `path`) and load its base config."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping (a W&B sweep spec), not {type(raw).__name__}")
    check_keys(raw, WANDB_KEYS + PIXLAB_KEYS, str(path), "")
    if "config" not in raw:
        raise ConfigError(f"{path}: missing key 'config' (the base config every trial starts from, e.g. configs/classify/lenet5_digits.yaml)")
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(f"{path}: method={method!r} is not a valid choice{did_you_mean(method, METHODS)}; valid choices: {', '.join(METHODS)}")
    parameters = _parse_parameters(raw.get("parameters") or {}, str(path), "")
    if method == "grid":
        for p in parameters:
            if p.values is None:
                raise ConfigError(f"{path}: parameters.{p.key}: method grid needs `values` or `value`, not distribution {p.distribution}; use method random for it")

    name = str(raw.get("name", path.stem))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"{path}: name={name!r} must be a folder name (letters, digits, '.', '_', '-')")
    seeds = _parse_seeds(raw.get("seeds"), str(path))
    if seeds != [None] and any(p.key == "seed" for p in parameters):
        raise ConfigError(f"{path}: 'seed' is both a parameter and set by `seeds:`; keep one of them")
    overrides = raw.get("overrides") or []
    if not (isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)):
        raise ConfigError(f"{path}: overrides must be a list of key=value strings, e.g. [train.epochs=5]")
    run_cap = _positive_int(raw.get("run_cap"), "run_cap", str(path), optional=True)
    if method == "random" and run_cap is None:
        raise ConfigError(f"{path}: method random needs run_cap, the number of draws (each runs with every seed)")
    metric = raw.get("metric")
    if metric is not None:
        if not isinstance(metric, dict) or "name" not in metric:
            raise ConfigError(f"{path}: metric must be a mapping with a name, e.g. {{name: test/error, goal: minimize}}")
        check_keys(metric, ("name", "goal", "target"), str(path), "metric.")
        if metric.get("goal", "minimize") not in ("minimize", "maximize"):
            raise ConfigError(f"{path}: metric.goal={metric['goal']!r} is not a valid choice; valid choices: minimize, maximize")
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{path}: slurm must be a mapping with keys {', '.join(SLURM_KEYS)}")
    check_keys(slurm, SLURM_KEYS, str(path), "slurm.")
    if slurm.get("cluster", "slurm") not in ("slurm", "local"):
        raise ConfigError(f"{path}: slurm.cluster={slurm['cluster']!r} is not a valid choice; valid choices: slurm, local")

    notes = [f"{path}: `{k}` is ignored: pixlab runs its own trial function" for k in ("program", "command") if k in raw]
    spec = SweepSpec(
        path=path,
        name=name,
        config=resolve_config_path(raw["config"], str(path)),
        method=method,
        parameters=parameters,
        seeds=seeds,
        overrides=list(overrides),
        run_cap=run_cap,
        sample_seed=_positive_int(raw.get("sample_seed", 0), "sample_seed", str(path), zero=True),
        retries=_positive_int(raw.get("retries", 2), "retries", str(path), zero=True),
        metric=metric,
        slurm=slurm,
        wandb={k: v for k, v in raw.items() if k in WANDB_KEYS and k not in ("program", "command")},
        notes=notes,
    )
    _, base = load_config(spec.config, spec.overrides)
    spec.runs_dir = Path(base.runs_dir).resolve()  # absolute: a Slurm job may start elsewhere
    return spec


def resolve_config_path(text: Any, source: str) -> Path:
    """A config path as the user wrote it: relative to the current folder, else to the repository."""
    for candidate in (Path(str(text)), REPO / str(text)):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{source}: config={text!r} is not a file (looked in {Path.cwd()} and {REPO})")


def _parse_parameters(node: Any, source: str, prefix: str) -> list[Parameter]:
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: parameters{'.' + prefix[:-1] if prefix else ''} must be a mapping of config keys")
    found = []
    for key, body in node.items():
        full = f"{prefix}{key}"
        where = f"parameters.{full}"
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: {where} must be a mapping with `values`, `value` or `distribution` (W&B sweep format), not {body!r}")
        check_keys(body, PARAMETER_KEYS, source, f"{where}.")
        if "parameters" in body:
            if len(body) > 1:
                raise ConfigError(f"{source}: {where} holds nested `parameters`, so it cannot also have {sorted(set(body) - {'parameters'})}")
            found += _parse_parameters(body["parameters"], source, f"{full}.")
        else:
            found.append(_parse_parameter(full, body, source))
    return found


def _parse_parameter(key: str, body: dict, source: str) -> Parameter:
    where = f"{source}: parameters.{key}"
    distribution = body.get("distribution")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        raise ConfigError(f"{where}.distribution={distribution!r} is not supported{did_you_mean(distribution, DISTRIBUTIONS)}; supported: {', '.join(DISTRIBUTIONS)}")
    if "values" in body or distribution == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values must be a non-empty list, not {values!r}")
        probabilities = body.get("probabilities")
        if probabilities is not None and (len(probabilities) != len(values) or abs(sum(probabilities) - 1) > 1e-6):
            raise ConfigError(f"{where}.probabilities={probabilities!r} must give one probability per value and sum to 1")
        return Parameter(key, values=values, distribution=distribution or "categorical", probabilities=probabilities)
    if "value" in body or distribution == "constant":
        if "value" not in body:
            raise ConfigError(f"{where}: distribution constant needs `value`")
        return Parameter(key, values=[body["value"]], distribution="constant")
    if distribution in ("normal", "log_normal"):
        sigma = body.get("sigma", 1.0)
        if not isinstance(sigma, (int, float)) or sigma <= 0:
            raise ConfigError(f"{where}.sigma={sigma!r} must be a number > 0")
        return Parameter(key, distribution=distribution, mu=float(body.get("mu", 0.0)), sigma=float(sigma))
    if "min" not in body or "max" not in body:
        raise ConfigError(f"{where} needs `values`, `value`, or a distribution with `min` and `max`; it has {sorted(body)}")
    low, high = body["min"], body["max"]
    for bound, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{bound}={value!r} must be a number")
    if distribution is None:  # W&B's rule
        distribution = "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
    if low > high:
        raise ConfigError(f"{where}: min={low!r} is greater than max={high!r}")
    if distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: int_uniform needs integer min and max, got {low!r} and {high!r}")
    if distribution in ("log_uniform_values", "q_log_uniform_values") and low <= 0:
        raise ConfigError(f"{where}: {distribution} needs min > 0, got min={low!r}")
    q = body.get("q")
    if distribution.startswith("q_"):
        q = 1 if q is None else q
        if not isinstance(q, (int, float)) or q <= 0:
            raise ConfigError(f"{where}.q={q!r} must be a number > 0")
    elif q is not None:
        raise ConfigError(f"{where}.q is only read by the q_ distributions, not by {distribution}")
    return Parameter(key, distribution=distribution, min=low, max=high, q=q)


def _parse_seeds(seeds: Any, source: str) -> list[Optional[int]]:
    if seeds is None:
        return [None]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(_positive_int(seeds, "seeds", source)))
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) and len(set(seeds)) == len(seeds):
        return list(seeds)
    raise ConfigError(f"{source}: seeds={seeds!r} must be a count (3: seeds 0, 1, 2) or a list of distinct integers")


def _positive_int(value: Any, key: str, source: str, optional: bool = False, zero: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(f"{source}: {key}={value!r} must be an integer >= {0 if zero else 1}")
    return value


def check_keys(node: dict, valid: Sequence[str], source: str, prefix: str) -> None:
    """A ConfigError naming the first key of `node` that is not in `valid`, with a "did you mean"."""
    for key in node:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key '{prefix}{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}")


# --------------------------------------------------------------------------------------------- trials
@dataclass(frozen=True)
class Trial:
    """One run of the sweep: the base config with `params` (dotted key -> value) and `seed`."""

    params: dict
    seed: Optional[int]

    @property
    def key(self) -> str:
        return json.dumps({"params": self.params, "seed": self.seed}, sort_keys=True)

    def overrides(self, spec: SweepSpec, trial_id: str) -> list[str]:
        """What `pixlab train` gets for this trial: the spec's overrides, the parameters, the seed, and
        the sweep's folder, run name and W&B group."""
        seed = [] if self.seed is None else [f"seed={self.seed}"]
        placed = [f"runs_dir={spec.dir}", f"name={spec.name}-{trial_id}", f"tracking.group={spec.name}"]
        return [*spec.overrides, *(f"{k}={override_text(v)}" for k, v in self.params.items()), *seed, *placed]


def expand(spec: SweepSpec) -> list[Trial]:
    """The trials of a grid or random spec, in a fixed order: each parameter combination with every seed."""
    if spec.method == "grid":
        combos = [dict(zip([p.key for p in spec.parameters], chosen)) for chosen in itertools.product(*(p.values for p in spec.parameters))]
        combos = combos[: spec.run_cap] if spec.run_cap else combos
    elif spec.method == "random":
        rng = random.Random(spec.sample_seed)
        combos = [{p.key: p.draw(rng) for p in spec.parameters} for _ in range(spec.run_cap)]
    else:
        raise ConfigError(f"{spec.path}: method bayes has no fixed list of trials: W&B's sweep server chooses them (--backend wandb)")
    return [Trial(params, seed) for params in combos for seed in spec.seeds]


def override_text(value: Any) -> str:
    """A value as a command-line override reads it back: true/false, null, floats that YAML sees as floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        text = repr(value)
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text  # 1e-05 -> 1.0e-05
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    return str(value)


def check_trials(spec: SweepSpec, trials: list[Trial]) -> None:
    """Load every trial's config as `pixlab train` would (bayes: one probe): a bad key fails here, before anything runs."""
    if spec.method == "bayes":
        trials = [Trial({p.key: p.probe() for p in spec.parameters}, spec.seeds[0])]
    for index, trial in enumerate(trials):
        overrides = trial.overrides(spec, f"t{index:03d}")
        try:
            load_config(spec.config, overrides)
        except ConfigError as e:
            raise ConfigError(f"{spec.path}: trial {trial.params | {'seed': trial.seed}}: {e}") from None


# --------------------------------------------------------------------------------------------- state
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
            data = json.loads(path.read_text())
            if data.get("fingerprint") != spec.fingerprint():
                raise ConfigError(
                    f"{path} belongs to a sweep made from a different spec (config, method, parameters, overrides, "
                    f"run_cap or sample_seed changed); give {spec.path} another `name:` or remove {spec.dir}"
                )
        else:
            data = {"format": STATE_FORMAT, "name": spec.name, "spec": str(spec.path), "fingerprint": spec.fingerprint(), "trials": {}}
        data["backend"] = backend
        spec.dir.mkdir(parents=True, exist_ok=True)
        state = cls(path, data)
        state.lock = _lock_folder(spec.dir)
        by_key = {record["key"]: tid for tid, record in data["trials"].items()}
        for trial in trials:
            if trial.key not in by_key:
                tid = f"t{len(data['trials']):03d}"
                data["trials"][tid] = {
                    "key": trial.key, "params": trial.params, "seed": trial.seed, "status": "pending",
                    "attempts": 0, "run_dir": None, "errors": [], "wall_time": None,
                    "overrides": trial.overrides(spec, tid),
                }
                by_key[trial.key] = tid
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

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2))

    def counts(self, ids: Sequence[str]) -> Counter:
        return Counter(self.trials[i]["status"] for i in ids)


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
        raise PixlabError(f"another `pixlab sweep` is running the sweep in {folder}; wait for it, or stop it first") from None
    return handle


def find_run_dir(sweep_dir: Path, run_name: str) -> Optional[Path]:
    """The run folder `pixlab train` made for a trial: runs/<sweep>/<date>-<time>-<run name>."""
    pattern = re.compile(r"\d{8}-\d{6}-" + re.escape(run_name) + r"(-\d+)?")
    found = sorted(p for p in sweep_dir.iterdir() if pattern.fullmatch(p.name) and (p / "config.yaml").exists())
    return found[-1] if found else None


def read_summary(run_dir: Optional[Path | str]) -> dict:
    """The final summary a trainer wrote to metrics.jsonl, or {} when it has none (yet)."""
    path = Path(run_dir or "") / "metrics.jsonl"
    if run_dir is None or not path.exists():
        return {}
    summaries = [r["summary"] for r in read_metrics(path) if "summary" in r]
    return summaries[-1] if summaries else {}


# --------------------------------------------------------------------------------------------- one attempt
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
        print(f"--- {_dt.datetime.now().isoformat(timespec='seconds')}: {'resume ' + job.run_dir if job.run_dir else 'train'}", flush=True)
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
                outcome = {"status": 128 - code if code < 0 else code or 1, "error": f"the trial's process ended ({why}) before it reported", "retry": True}
            if not conn.closed:
                conn.close()
            del self.running[tid]
            ended.append((tid, outcome))
        return ended

    def signal(self, signum: int) -> None:
        for process, _, _ in self.running.values():
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


# --------------------------------------------------------------------------------------------- the sweep
@dataclass
class SweepResult:
    status: int  # the exit status of `pixlab sweep`
    dir: Path
    trials: list[dict]  # this invocation's trial records, in the spec's order, each with its "id"


def run_sweep(
    spec: SweepSpec,
    trial_fn: TrialFunction,
    backend: str = "local",
    workers: int = 1,
    retries: Optional[int] = None,
    threads: int = 1,
    out=None,
) -> SweepResult:
    """Check the spec's trials, then run those not finished yet on `backend`; see the module docstring."""
    out = out or sys.stderr
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not a valid choice; valid choices: {', '.join(BACKENDS)}")
    if workers < 1 or threads < 1 or (retries is not None and retries < 0):
        raise ConfigError(f"--workers and --threads must be >= 1 and --retries >= 0, got {workers}, {threads} and {retries}")
    for note in spec.notes:
        print(f"pixlab: {note}", file=out)
    if backend == "wandb":
        return run_wandb(spec, trial_fn, workers, out)
    if spec.method == "bayes":
        raise ConfigError(
            f"{spec.path}: method bayes needs W&B's sweep server, which chooses each trial from the results so far; "
            "run it with --backend wandb while online and logged in (wandb login), or use method grid or random"
        )
    if spec.wandb.get("early_terminate"):
        print(f"pixlab: {spec.path}: early_terminate is ignored without W&B's sweep server", file=out)
    trials = expand(spec)
    check_trials(spec, trials)
    if backend == "slurm":
        _check_slurm(spec)
    state = SweepState.open(spec, trials, backend)
    pool = LocalPool(trial_fn) if backend == "local" else SlurmPool(trial_fn, spec.dir / "slurm", spec.slurm, spec.name)
    print(f"pixlab: sweep {spec.name}: {len(trials)} trials in {spec.dir} ({backend}, {workers} at a time)", file=out)
    try:
        status = _drive(spec, state, pool, workers, spec.retries if retries is None else retries, threads, Progress(spec.name, out))
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


def _drive(spec: SweepSpec, state: SweepState, pool, workers: int, retries: int, threads: int, progress: "Progress") -> int:
    """Start trials while there is room, record each outcome, retry crashes, stop on a signal."""
    queue = deque(tid for tid in state.ids if state.trials[tid]["status"] != "done")
    tries: Counter = Counter()  # attempts in this invocation (a re-run gives failed trials their retries again)
    started: dict[str, float] = {}
    durations: list[float] = []
    with _passing_signals_to(pool) as stop:
        while (queue and stop.signum is None) or started:
            while queue and len(started) < workers and stop.signum is None:
                tid = queue.popleft()
                record = state.trials[tid]
                run_dir = find_run_dir(spec.dir, f"{spec.name}-{tid}")
                record.update(status="running", attempts=record["attempts"] + 1, run_dir=str(run_dir) if run_dir else None)
                state.save()
                log = spec.dir / f"{tid}.log"
                pool.start(tid, TrialJob(str(spec.config), tuple(record["overrides"]), record["run_dir"], str(log), threads))
                started[tid] = time.monotonic()
                tries[tid] += 1
            for tid, outcome in pool.wait(timeout=1.0):
                seconds = time.monotonic() - started.pop(tid)
                record = state.trials[tid]
                run_dir = find_run_dir(spec.dir, f"{spec.name}-{tid}")
                record["run_dir"] = str(run_dir) if run_dir else None
                if outcome["status"] == 0 and outcome["error"] is None:
                    record["status"] = "done"
                    record["wall_time"] = _run_wall_time(run_dir)
                    durations.append(seconds)
                elif stop.signum is not None:
                    record["status"] = "interrupted"
                else:
                    error = outcome["error"] or f"exit status {outcome['status']}"
                    record["errors"].append({"attempt": record["attempts"], "time": _dt.datetime.now().isoformat(timespec="seconds"), "error": error})
                    again = outcome["retry"] and tries[tid] <= retries
                    record["status"] = "pending" if again else "failed"
                    last = error.strip().splitlines()[-1]
                    progress.event(f"{tid} failed (attempt {record['attempts']}): {last}; " + ("retrying" + (" from its checkpoint" if run_dir else "") if again else f"giving up, see {spec.dir / (tid + '.log')}"))
                    if again:
                        queue.append(tid)
                state.save()
            progress.show(state.counts(state.ids), _eta(durations, started, len(queue), workers))
    progress.close()
    counts = state.counts(state.ids)
    if stop.signum is not None:
        print(f"pixlab: sweep stopped by signal {stop.signum}; run the same command again to resume it", file=progress.out)
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
        line = f"sweep {self.name}: {done} done, {running} running, {failed} failed, {pending} pending"
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
    """One line per trial: id, status, seed, parameters, the spec's metric, run folder."""
    lines = []
    for r in records:
        value = read_summary(r["run_dir"]).get(metric["name"]) if metric and r["status"] == "done" else None
        shown = "" if value is None else f"  {metric['name']}={value:.6g}"
        params = " ".join(f"{k}={override_text(v)}" for k, v in r["params"].items())
        seed = "" if r["seed"] is None else f"  seed={r['seed']}"
        lines.append(f"  {r['id']}  {r['status']:<11}{seed}  {params}{shown}  {r['run_dir'] or ''}".rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- W&B
def check_wandb_online(env: Optional[dict] = None) -> None:
    """A ConfigError (exit 2) unless W&B can reach its server: not offline or disabled, and logged in."""
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE", "")
    if mode in ("offline", "dryrun", "disabled") or env.get("WANDB_DISABLED", "").lower() in ("true", "1"):
        raise ConfigError(
            f"--backend wandb needs W&B's sweep server, but W&B is switched off here (WANDB_MODE={mode or 'unset'}"
            f"{', WANDB_DISABLED' if env.get('WANDB_DISABLED') else ''}); unset it and log in (wandb login), or use --backend local"
        )
    import wandb

    if not wandb.login(prompt=False):
        raise ConfigError("--backend wandb needs W&B's sweep server, but this machine is not logged in to W&B: run `wandb login` (or set WANDB_API_KEY), or use --backend local")


def run_wandb(spec: SweepSpec, trial_fn: TrialFunction, workers: int, out=None) -> SweepResult:
    """Register the sweep with W&B (once: its id is kept in sweep.json) and run `workers` agents on it."""
    out = out or sys.stderr
    check_wandb_online()
    check_trials(spec, [] if spec.method == "bayes" else expand(spec))
    import wandb

    state = SweepState.open(spec, [], "wandb")
    sweep_id = state.data.get("wandb_sweep_id")
    base = load_config(spec.config, spec.overrides)[1]
    project, entity = spec.wandb.get("project", base.tracking.project), spec.wandb.get("entity", base.tracking.entity)
    if sweep_id is None:
        config = dict(spec.wandb) | {"name": spec.name}
        if spec.seeds != [None]:  # the seeds are one more parameter for W&B's server
            config["parameters"] = dict(config.get("parameters") or {}) | {"seed": {"values": spec.seeds}}
        sweep_id = wandb.sweep(config, project=project, entity=entity)
        state.data["wandb_sweep_id"] = sweep_id
        state.save()
    state.lock.close()  # W&B's server coordinates this sweep
    print(f"pixlab: W&B sweep {sweep_id} ({project}); trials in {spec.dir}", file=out)
    context = multiprocessing.get_context("spawn")
    agents = [context.Process(target=_wandb_agent, args=(sweep_id, project, entity, trial_fn, spec)) for _ in range(workers)]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.join()
    failed = any(agent.exitcode for agent in agents)
    return SweepResult(1 if failed else 0, spec.dir, [])


def _wandb_agent(sweep_id: str, project: str, entity: Optional[str], trial_fn: TrialFunction, spec: SweepSpec) -> None:
    import wandb

    wandb.agent(sweep_id, function=lambda: _wandb_trial(trial_fn, spec), project=project, entity=entity)


def _wandb_trial(trial_fn: TrialFunction, spec: SweepSpec) -> None:
    """One trial chosen by W&B's server. The agent put the run's id (WANDB_RUN_ID) and its parameters
    (a YAML file at WANDB_SWEEP_PARAM_PATH) in the environment; the trial's own wandb.init joins that run."""
    chosen = yaml.safe_load(Path(os.environ["WANDB_SWEEP_PARAM_PATH"]).read_text())
    params = {k: v["value"] for k, v in chosen.items() if isinstance(v, dict) and "value" in v}
    seed = params.pop("seed", None) if spec.seeds != [None] else None
    overrides = Trial(params, seed).overrides(spec, os.environ["WANDB_RUN_ID"]) + ["tracking.wandb=online"]
    status = trial_fn(str(spec.config), overrides, None)
    if status:
        raise RuntimeError(f"trial {params} ended with exit status {status}")
