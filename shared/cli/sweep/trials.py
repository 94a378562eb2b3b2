"""A spec's trials: the grid's product or the seeded random draws, each crossed with the seeds, and the
key=value overrides that make each one a `pixlab train` command."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Optional

from shared.cli.sweep.spec import SweepSpec
from shared.config import load_config
from shared.errors import ConfigError


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
        combos = [
            dict(zip([p.key for p in spec.parameters], chosen))
            for chosen in itertools.product(*(p.values for p in spec.parameters))
        ]
        combos = combos[: spec.run_cap] if spec.run_cap else combos
    elif spec.method == "random":
        rng = random.Random(spec.sample_seed)
        combos = [{p.key: p.draw(rng) for p in spec.parameters} for _ in range(spec.run_cap)]
    else:
        raise ConfigError(
            f"{spec.path}: method bayes has no fixed list of trials: its study asks for them as the sweep goes"
        )
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
