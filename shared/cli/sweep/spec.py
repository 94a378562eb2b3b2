"""A sweep spec: W&B's sweep YAML (plus pixlab's keys), read and checked whole before anything runs."""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from shared.config import REPO, check_keys, did_you_mean, load_config
from shared.errors import ConfigError

WANDB_KEYS = (
    "method",
    "parameters",
    "metric",
    "name",
    "description",
    "program",
    "command",
    "early_terminate",
    "run_cap",
    "project",
    "entity",
)
PIXLAB_KEYS = ("config", "seeds", "overrides", "sample_seed", "retries", "slurm")
METHODS = ("grid", "random", "bayes")
PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "q", "mu", "sigma", "probabilities", "parameters")
BOUNDED = ("uniform", "int_uniform", "q_uniform", "log_uniform", "log_uniform_values", "q_log_uniform_values")
DISTRIBUTIONS = ("constant", "categorical", *BOUNDED, "normal", "log_normal")
SLURM_KEYS = ("cluster", "partition", "time", "gpus", "cpus", "mem_gb")
EARLY_TERMINATE_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")


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
            return (
                rng.choices(self.values, weights=self.probabilities)[0]
                if self.probabilities
                else rng.choice(self.values)
            )
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
        return x if self.q is None else quantize(x, self.q)

    def probe(self) -> Any:
        """A value inside the parameter's range, to check that its key exists before any trial runs."""
        if self.values is not None:
            return self.values[0]
        if self.distribution in ("normal", "log_normal"):
            return math.exp(self.mu) if self.distribution == "log_normal" else self.mu
        return math.exp(self.min) if self.distribution == "log_uniform" else self.min


def quantize(x: float, q: float) -> float | int:
    """W&B's q_ distributions: `x` rounded to a multiple of `q` (an int when `q` is one), without float dust."""
    x = round(round(x / q) * q, 12)
    return int(x) if float(q).is_integer() and float(x).is_integer() else x


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
    early_terminate: Optional[dict] = None  # W&B's hyperband, checked, with its default eta
    slurm: dict = field(default_factory=dict)
    wandb: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what was accepted but is ignored, said once at the start
    runs_dir: Path = Path("runs")  # the base config's runs_dir; the sweep lives in runs_dir/<name>

    @property
    def dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def uses_study(self) -> bool:
        """Whether an Optuna study runs beside the trials (search.py): to choose them, or to stop them early."""
        return self.method == "bayes" or self.early_terminate is not None

    def fingerprint(self) -> dict:
        """What makes two specs the same sweep. Seeds are left out where more seeds extend a sweep; with a
        study they are in it (its objective is the mean over them), and so are the metric and early_terminate.
        A bayes sweep leaves run_cap out: raising it continues the search."""
        found = {
            "config": str(self.config),
            "method": self.method,
            "parameters": [asdict(p) for p in self.parameters],
            "overrides": list(self.overrides),
            "run_cap": self.run_cap,
            "sample_seed": self.sample_seed,
        }
        if self.uses_study:
            found |= {"metric": self.metric, "early_terminate": self.early_terminate, "seeds": self.seeds}
        if self.method == "bayes":
            del found["run_cap"]
        return found


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
        raise ConfigError(
            f"{path}: missing key 'config' (the base config every trial starts from, e.g. configs/classify/lenet5_digits.yaml)"
        )
    method = raw.get("method", "grid")
    if method not in METHODS:
        raise ConfigError(
            f"{path}: method={method!r} is not a valid choice{did_you_mean(method, METHODS)}; valid choices: {', '.join(METHODS)}"
        )
    parameters = _parse_parameters(raw.get("parameters") or {}, str(path), "")
    if method == "grid":
        for p in parameters:
            if p.values is None:
                raise ConfigError(
                    f"{path}: parameters.{p.key}: method grid needs `values` or `value`, not distribution {p.distribution}; use method random for it"
                )

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
    if metric is None and (method == "bayes" or raw.get("early_terminate")):
        why = "method bayes" if method == "bayes" else "early_terminate"
        raise ConfigError(
            f"{path}: {why} needs `metric`, the number it optimizes, e.g. {{name: test/error, goal: minimize}}"
        )
    if metric is not None:
        if not isinstance(metric, dict) or "name" not in metric:
            raise ConfigError(
                f"{path}: metric must be a mapping with a name, e.g. {{name: test/error, goal: minimize}}"
            )
        check_keys(metric, ("name", "goal", "target"), str(path), "metric.")
        if metric.get("goal", "minimize") not in ("minimize", "maximize"):
            raise ConfigError(
                f"{path}: metric.goal={metric['goal']!r} is not a valid choice; valid choices: minimize, maximize"
            )
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise ConfigError(f"{path}: slurm must be a mapping with keys {', '.join(SLURM_KEYS)}")
    check_keys(slurm, SLURM_KEYS, str(path), "slurm.")
    if slurm.get("cluster", "slurm") not in ("slurm", "local"):
        raise ConfigError(
            f"{path}: slurm.cluster={slurm['cluster']!r} is not a valid choice; valid choices: slurm, local"
        )

    early_terminate = _parse_early_terminate(raw.get("early_terminate"), str(path))

    notes = [
        f"{path}: `{k}` is ignored: pixlab runs its own trial function" for k in ("program", "command") if k in raw
    ]
    if method == "bayes":
        notes += [
            f"{path}: parameters.{p.key}.probabilities are ignored: method random reads them, bayes searches all values"
            for p in parameters
            if p.probabilities
        ]
    if (raw.get("early_terminate") or {}).get("strict"):
        notes.append(f"{path}: early_terminate.strict is W&B's server's alone; pixlab's pruner ignores it")
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
        early_terminate=early_terminate,
        slurm=slurm,
        wandb={k: v for k, v in raw.items() if k in WANDB_KEYS and k not in ("program", "command")},
        notes=notes,
    )
    try:
        _, base = load_config(spec.config, spec.overrides)
    except ConfigError as e:  # the spec's config or its `overrides:`; their own messages name which
        raise ConfigError(f"{path}: {e}") from None
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
            raise ConfigError(
                f"{source}: {where} must be a mapping with `values`, `value` or `distribution` (W&B sweep format), not {body!r}"
            )
        check_keys(body, PARAMETER_KEYS, source, f"{where}.")
        if "parameters" in body:
            if len(body) > 1:
                raise ConfigError(
                    f"{source}: {where} holds nested `parameters`, so it cannot also have {sorted(set(body) - {'parameters'})}"
                )
            found += _parse_parameters(body["parameters"], source, f"{full}.")
        else:
            found.append(_parse_parameter(full, body, source))
    return found


def _parse_parameter(key: str, body: dict, source: str) -> Parameter:
    where = f"{source}: parameters.{key}"
    distribution = body.get("distribution")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}.distribution={distribution!r} is not supported{did_you_mean(distribution, DISTRIBUTIONS)}; supported: {', '.join(DISTRIBUTIONS)}"
        )
    if "values" in body or distribution == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values must be a non-empty list, not {values!r}")
        probabilities = body.get("probabilities")
        if probabilities is not None and (len(probabilities) != len(values) or abs(sum(probabilities) - 1) > 1e-6):
            raise ConfigError(
                f"{where}.probabilities={probabilities!r} must give one probability per value and sum to 1"
            )
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
        raise ConfigError(
            f"{where} needs `values`, `value`, or a distribution with `min` and `max`; it has {sorted(body)}"
        )
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


def _parse_early_terminate(node: Any, source: str) -> Optional[dict]:
    """W&B's `early_terminate: {type: hyperband, min_iter | max_iter and s, eta}`, checked, as {eta, min_iter} or
    {eta, max_iter, s} (W&B reads max_iter first when both are given); `hyperband_bands` turns it into bands."""
    if node is None:
        return None
    if not isinstance(node, dict):
        raise ConfigError(f"{source}: early_terminate must be a mapping, e.g. {{type: hyperband, min_iter: 2, eta: 3}}")
    check_keys(node, EARLY_TERMINATE_KEYS, source, "early_terminate.")
    if node.get("type") != "hyperband":
        raise ConfigError(
            f"{source}: early_terminate.type={node.get('type')!r} is not a valid choice; valid choices: hyperband"
        )
    for key in ("min_iter", "max_iter", "s", "eta"):
        if key in node:
            _positive_int(node[key], f"early_terminate.{key}", source)
    eta = node.get("eta", 3)
    if eta < 2:
        raise ConfigError(f"{source}: early_terminate.eta={eta!r} must be an integer >= 2 (the bands' ratio)")
    if "max_iter" in node:
        if "s" not in node:
            raise ConfigError(f"{source}: early_terminate.max_iter needs `s`, the number of bands below it")
        found = {"eta": eta, "max_iter": node["max_iter"], "s": node["s"]}
        if not hyperband_bands(found):
            raise ConfigError(
                f"{source}: early_terminate.max_iter={node['max_iter']} is below eta={eta}: no band to stop trials at"
            )
        return found
    if "min_iter" not in node:
        raise ConfigError(f"{source}: early_terminate needs `min_iter` (or `max_iter` and `s`), the first band")
    return {"eta": eta, "min_iter": node["min_iter"]}


def hyperband_bands(early_terminate: dict) -> list[int]:
    """W&B's hyperband bands, ascending: min_iter * eta**k for k = 0, 1, ... (W&B lists 100 of them; these stop at
    10**9 iterations), or int(max_iter / eta**k) for k = 1..s, those >= 1. A band is an index into a run's history of
    the metric: band b is met once the run logged it more than b times."""
    eta = early_terminate["eta"]
    if "max_iter" in early_terminate:
        top = early_terminate["max_iter"]
        return sorted(int(top / eta**k) for k in range(1, early_terminate["s"] + 1) if top / eta**k >= 1)
    bands = [early_terminate["min_iter"]]
    while bands[-1] * eta <= 10**9:
        bands.append(bands[-1] * eta)
    return bands


def _parse_seeds(seeds: Any, source: str) -> list[Optional[int]]:
    if seeds is None:
        return [None]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(_positive_int(seeds, "seeds", source)))
    if (
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        and len(set(seeds)) == len(seeds)
    ):
        return list(seeds)
    raise ConfigError(f"{source}: seeds={seeds!r} must be a count (3: seeds 0, 1, 2) or a list of distinct integers")


def _positive_int(value: Any, key: str, source: str, optional: bool = False, zero: bool = False) -> Optional[int]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(f"{source}: {key}={value!r} must be an integer >= {0 if zero else 1}")
    return value
