"""Typed run configs: a YAML file plus dotted overrides, validated against the dataclass its `algo:` names.

    cfg = load_config("configs/classify/lenet5_mnist.yaml", ["optim.lr=0.01", "seed=3"])

OmegaConf does the parsing, merging and type conversion; this module adds the algorithm registry and
turns OmegaConf's exceptions into one-line `ConfigError`s that name the file (or the override), the
key, and the valid keys or choices with a "did you mean". Every algorithm config subclasses
`RunConfig`, so seeding, device, tracking and checkpointing read the same keys everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
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
        require(self.checkpoint.every > 0, "checkpoint.every", "must be > 0", self.checkpoint.every)
        require(self.checkpoint.keep_last > 0, "checkpoint.keep_last", "must be > 0", self.checkpoint.keep_last)
        require(self.tracking.log_every > 0, "tracking.log_every", "must be > 0", self.tracking.log_every)


def require(ok: bool, key: str, what: str, value: Any) -> None:
    """Range checks for `__post_init__`: raise a ConfigError naming the key unless `ok`."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {what}")


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


@dataclass(frozen=True)
class Algorithm:
    """What the CLI needs to run an algorithm: its config class and its entry points."""

    name: str
    config: type
    train: Callable[[Any, Any], None]  # train(cfg, run)
    evaluate: Optional[Callable[[Any, dict], dict]] = None  # evaluate(cfg, checkpoint) -> metrics


ALGORITHMS: dict[str, Algorithm] = {}


def register(name: str, config: type, train: Callable, evaluate: Optional[Callable] = None) -> Algorithm:
    """Make `algo: name` in a config file mean this config class and these functions."""
    if not (dataclasses.is_dataclass(config) and issubclass(config, RunConfig)):
        raise TypeError(f"{config!r} must be a dataclass subclassing RunConfig")
    ALGORITHMS[name] = Algorithm(name, config, train, evaluate)
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
    except ConfigError as e:  # a range check in __post_init__
        raise ConfigError(f"{path}: {e}") from None
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


def _merge(base: DictConfig, layer: dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        raise _explain(e, base, layer, source) from None


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
