"""Typed run configs: a YAML file plus dotted overrides, validated against the dataclass its `algo:` names.

    cfg = load_config("configs/classify/lenet5_mnist.yaml", ["optim.lr=0.01", "seed=3"])

OmegaConf does the parsing, merging and type conversion; this module adds the algorithm registry and
turns OmegaConf's exceptions into one-line `ConfigError`s that name the file (or the override), the
key, and the valid keys or choices with a "did you mean". Every algorithm config subclasses
`RunConfig`, so seeding, device, tracking and checkpointing read the same keys everywhere.
A config is checked whole before anything is written: its `__post_init__` (ranges; every float finite),
then its `check()` (what needs more than the values, such as gymnasium's env registry); an error names
the override that set the key, else the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from shared.errors import ConfigError


@dataclass
class TrackingConfig:
    """Where metrics go. metrics.jsonl is always written; W&B is on top of it."""

    # auto: online when WANDB_API_KEY is set and WANDB_MODE is not offline/disabled, else offline.
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "pixlab"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    log_every: int = 50  # training steps between two train/ scalars


@dataclass
class CheckpointConfig:
    every: int = 1000  # training steps between checkpoints (one is also written at the end and on a signal)
    keep_last: int = 3


@dataclass
class RunConfig:
    """Keys every algorithm has. Subclass it and add the algorithm's own sections."""

    algo: str = ""
    name: str = "run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    runs_dir: str = "runs"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        require(
            self.name not in ("", ".", "..") and "/" not in self.name and "\0" not in self.name,
            "name",
            "must be a plain folder name (no '/'); it names the run folder",
            self.name,
        )
        require(self.checkpoint.every > 0, "checkpoint.every", "must be > 0", self.checkpoint.every)
        require(self.checkpoint.keep_last > 0, "checkpoint.keep_last", "must be > 0", self.checkpoint.keep_last)
        require(self.tracking.log_every > 0, "tracking.log_every", "must be > 0", self.tracking.log_every)
        require_finite(self)

    def check(self) -> None:
        """Checks that need more than the values themselves (a registry, a model's input size): `load_config`
        runs it after `__post_init__`, so `pixlab train` runs it before the run folder exists. Override it."""


def require(ok: bool, key: str, what: str, value: Any) -> None:
    """Range checks for `__post_init__` and `check`: raise a ConfigError naming the key unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {what}", key=key)


def require_finite(cfg: Any, prefix: str = "") -> None:
    """Every float of a config dataclass (nested sections and lists included) must be finite: an `inf` or
    `nan` learning rate, say, would train to a NaN and look like a run."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            require_finite(value, key + ".")
        for item in value if isinstance(value, list) else [value]:
            require(not isinstance(item, float) or math.isfinite(item), key, "must be a finite number", value)


def require_positive(cfg: Any, *keys: str, optional: Sequence[str] = ()) -> None:
    """`require(value > 0, ...)` for each dotted key of `cfg`; the `optional` keys may also be None."""
    for key in (*keys, *optional):
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if key in optional:
            require(value is None or value > 0, key, "must be > 0 or null", value)
        else:
            require(value > 0, key, "must be > 0", value)


def require_choice(value: Any, choices: Sequence[str], key: str) -> None:
    """For choices known only at run time (model names): a ConfigError with the valid ones."""
    if value not in choices:
        raise ConfigError(
            f"{key}={value!r} is not a valid choice{did_you_mean(value, choices)}; valid choices: {', '.join(choices)}"
        )


# The checkout's root: a config path in a sweep spec or a reproduce entry is looked up in the current
# folder, then here; configs/reproduce/ lives here.
REPO = Path(__file__).resolve().parent.parent


def check_keys(node: dict, valid: Sequence[str], source: str, prefix: str) -> None:
    """For hand-checked YAML (sweep specs, reproduce entries): a ConfigError naming the first key of `node`
    that is not in `valid`, with a "did you mean"; `prefix` is the dotted path of `node` in `source`."""
    for key in node:
        if key not in valid:
            raise ConfigError(
                f"{source}: unknown key '{prefix}{key}'{did_you_mean(key, valid)}; valid keys: {', '.join(valid)}"
            )


# The registry. An algorithm is one file that ends with one `register(...)` call: its config class (whose
# `algo` default is the algorithm's name, written nowhere else), its entry points, and what `pixlab report`,
# `pixlab reproduce` and the W&B workspace need to show its runs (its metrics with their goal and unit, and
# what its `step` counts). shared/cli/__init__.py finds the files that call `register` (import_algorithms).
GOALS = ("minimize", "maximize")


@dataclass(frozen=True)
class Metric:
    """A metric an algorithm logs, as `pixlab report`, `pixlab reproduce` and the W&B workspace show it."""

    name: str  # its key in metrics.jsonl and W&B, e.g. "test/error"
    goal: Optional[str] = None  # "minimize" or "maximize"; None: not a score (a learning rate, epsilon)
    unit: str = ""  # the unit of the shown value; "" for a score that has none (an episode return, an FID)
    scale: float = 1.0  # shown value = logged value * scale (test/error is logged as a fraction, shown in %)
    once: bool = False  # logged once, in the run's final summary, not along the run

    @property
    def higher_better(self) -> bool:
        return self.goal == "maximize"


@dataclass(frozen=True)
class Algorithm:
    """What pixlab knows about an algorithm: its config class, its entry points, how to show its runs."""

    name: str  # the `algo:` of its config files; the first W&B tag of its runs
    config: type
    train: Callable[[Any, Any], None]  # train(cfg, run)
    evaluate: Optional[Callable[[Any, dict], dict]] = None  # evaluate(cfg, checkpoint) -> metrics
    metrics: tuple[Metric, ...] = ()  # in order of preference; see `register`
    step_unit: str = "optimizer steps"  # what the `step` of its metrics.jsonl counts
    media: tuple[str, ...] = ()  # the keys of the images and videos it logs

    def metric(self, name: str) -> Optional[Metric]:
        """The registered metric called `name`, or None."""
        return next((m for m in self.metrics if m.name == name), None)

    def scores(self) -> list[str]:
        """The metrics with a goal, in order: `pixlab report` judges runs by the first one some run logged."""
        return [m.name for m in self.metrics if m.goal is not None]


ALGORITHMS: dict[str, Algorithm] = {}


def register(
    config: type,
    train: Callable,
    evaluate: Optional[Callable] = None,
    *,
    metrics: Sequence[dict],
    step_unit: str = "optimizer steps",
    media: Sequence[str] = (),
) -> Algorithm:
    """Make `algo: <name>` in a config file mean this config class and these functions; the name is the default
    of the class's own `algo` field, the one place it is written.

    `metrics` are the keyword arguments of a `Metric` each, in order of preference: `pixlab report` judges
    the runs by the first one with a goal that some run logged (an algorithm that evaluates only now and
    then lists its evaluation metric first and a training metric after it), and the W&B workspace draws
    them in this order. `step_unit` names what the logged `step` counts (agent steps for an RL agent).
    """
    if not (dataclasses.is_dataclass(config) and issubclass(config, RunConfig)):
        raise TypeError(f"{config!r} must be a dataclass subclassing RunConfig")
    name = next(f.default for f in dataclasses.fields(config) if f.name == "algo")
    if not name:
        raise TypeError(f"{config.__name__} must name its algorithm: algo: str = '<name>'")
    described = tuple(Metric(**m) for m in metrics)
    for m in described:
        if m.goal not in (*GOALS, None):
            raise TypeError(
                f"register({name!r}): metric {m.name!r} has goal={m.goal!r}; valid: {', '.join(GOALS)}, None"
            )
    if not any(m.goal for m in described):
        raise TypeError(f"register({name!r}) needs a metric with a goal: the one `pixlab report` judges its runs by")
    ALGORITHMS[name] = Algorithm(name, config, train, evaluate, described, step_unit, tuple(media))
    return ALGORITHMS[name]


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Algorithm, Any]:
    """Read a YAML config, apply `key=value` overrides, and return (algorithm, validated dataclass)."""
    path = Path(path)
    file_layer = _read_yaml(path)
    override_layer = _parse_overrides(overrides)

    algo_name = override_layer.get("algo", file_layer.get("algo"))
    if algo_name not in ALGORITHMS:
        choices = sorted(ALGORITHMS)
        problem = "has no 'algo' key" if algo_name is None else f"algo={algo_name!r} is not a known algorithm"
        raise ConfigError(f"{path}: {problem}; valid choices: {', '.join(choices)}{did_you_mean(algo_name, choices)}")
    algorithm = ALGORITHMS[algo_name]

    schema = OmegaConf.structured(algorithm.config)
    merged = _merge(schema, file_layer, str(path))
    for text in overrides:
        merged = _merge(merged, _parse_overrides([text]), f"override '{text}'")
    try:
        cfg = OmegaConf.to_object(merged)
        cfg.check()
    except ConfigError as e:  # a range check in __post_init__ or check(): blame the override that set the key
        setters = [text for text in overrides if e.key and _sets(text.split("=", 1)[0].strip(), e.key)]
        source = f"override '{setters[-1]}'" if setters else str(path)
        raise ConfigError(f"{source}: {e}", key=e.key) from None
    return algorithm, cfg


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML, loadable again by `load_config`."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def _parse_overrides(overrides: Sequence[str]) -> dict:
    for text in overrides:
        key = text.split("=", 1)[0]
        if "=" not in text or not key or key != key.strip():
            raise ConfigError(f"override '{text}' must look like key=value, for example optim.lr=0.01")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {_first_line(e)}") from None


def _sets(override_key: str, key: str) -> bool:
    """Whether an override of `override_key` sets `key` (itself, or the section holding it)."""
    return key == override_key or key.startswith(override_key + ".")


def _merge(base: DictConfig, layer: dict, source: str) -> DictConfig:
    _check_sections(base, layer, source)
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        raise _explain(e, base, layer, source) from None


def _check_sections(schema: DictConfig, layer: dict, source: str, prefix: str = "") -> None:
    """A scalar where the schema has a section (`data: 5`): OmegaConf's message names no key, so name it here."""
    for key, value in layer.items():
        node = schema.get(key) if key in schema else None
        if not isinstance(node, DictConfig):
            continue
        if isinstance(value, dict):
            _check_sections(node, value, source, f"{prefix}{key}.")
        elif value is not None:
            keys = ", ".join(sorted(str(k) for k in node.keys()))
            raise ConfigError(f"{source}: '{prefix}{key}' is a section, not a value ({value!r}); give it keys: {keys}")


def _explain(error: OmegaConfBaseException, schema: DictConfig, layer: dict, source: str) -> ConfigError:
    """Turn an OmegaConf merge error into a sentence naming the source, the key and what is valid."""
    full_key = str(getattr(error, "full_key", "") or "")
    parent_key, _, leaf = full_key.rpartition(".")
    parent = OmegaConf.select(schema, parent_key) if parent_key else schema

    if isinstance(error, ConfigKeyError) and isinstance(parent, DictConfig):
        valid = sorted(str(k) for k in parent.keys())
        where = f" under '{parent_key}'" if parent_key else ""
        return ConfigError(
            f"{source}: unknown key '{full_key}'{did_you_mean(leaf, valid, parent_key)}; "
            f"valid keys{where}: {', '.join(valid)}"
        )

    choices = _choices(parent, leaf)
    if choices is not None:
        value = OmegaConf.select(OmegaConf.create(layer), full_key, default=None)
        return ConfigError(
            f"{source}: {full_key}={value!r} is not a valid choice{did_you_mean(value, choices)}; "
            f"valid choices: {', '.join(choices)}"
        )
    return ConfigError(f"{source}: {full_key}: {_first_line(error)}")


def _choices(parent: Any, leaf: str) -> Optional[list[str]]:
    """The allowed values of a Literal field, or None when the field is not a choice."""
    object_type = getattr(getattr(parent, "_metadata", None), "object_type", None)
    if not dataclasses.is_dataclass(object_type):
        return None
    hint = typing.get_type_hints(object_type).get(leaf)
    if typing.get_origin(hint) is Literal:
        return [str(a) for a in typing.get_args(hint)]
    return None


def did_you_mean(value: Any, choices: Sequence[str], prefix: str = "") -> str:
    if value is None:
        return ""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    if not close:
        return ""
    return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)"


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
