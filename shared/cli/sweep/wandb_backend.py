"""`--backend wandb`: W&B's sweep server chooses the trials (the only way to run method bayes) and
`wandb.agent`s run them; needs a W&B login, so the tests only check its refusals."""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path
from typing import Optional

import yaml

from shared.cli.sweep.backends import TrialFunction
from shared.cli.sweep.spec import SweepSpec
from shared.cli.sweep.state import SweepResult, SweepState
from shared.cli.sweep.trials import Trial, check_trials, expand
from shared.config import load_config
from shared.errors import ConfigError


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
        raise ConfigError(
            "--backend wandb needs W&B's sweep server, but this machine is not logged in to W&B: run `wandb login` (or set WANDB_API_KEY), or use --backend local"
        )


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
    agents = [
        context.Process(target=_wandb_agent, args=(sweep_id, project, entity, trial_fn, spec)) for _ in range(workers)
    ]
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
