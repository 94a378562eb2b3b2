"""The Optuna study beside sweep.json: it chooses a bayes sweep's trials and stops the trials that fall behind.

Optuna runs here, in the coordinating process, on every backend (local, slurm) and without W&B; `--backend
wandb` keeps W&B's own server. The study is a journal file, runs/<sweep>/study.journal, that Optuna appends to:
running the sweep again loads it and goes on from its trial count.

Search (method: bayes). Each parameter's W&B distribution maps to an Optuna distribution (`map_parameter`);
Optuna's TPE sampler asks for the next point (its first `STARTUP_TRIALS` are random draws, TPE needs a history to
fit), seeded by `sample_seed` and the trial's number, so that a sweep stopped and run again asks what an
uninterrupted one would have asked. One study trial is one point: it runs once per seed of `seeds:` (one sweep
trial, one run folder each), and the objective it is told is the mean of `metric.name` over them (each run's
summary value, else its last logged one). `run_cap` counts study trials, pruned and failed ones included, as
W&B's counts runs; raising it and running again continues the search. `metric.target`: no new trials once a
trial reached it, as on W&B. A trial that failed for good stays failed (the study was told), and the search asks
a new point instead.

Early termination (`early_terminate: {type: hyperband, ...}`, any method). W&B counts a metric's "iterations" as
its logged values: its band b is met by a run that logged the metric more than b times (history index b, the
(b+1)-th value). The sweep reads each running trial's metrics.jsonl between polls and reports its i-th logged
value (from 0) at Optuna step i, the mean over the point's seeds once each has logged it, so Optuna's steps are
W&B's history indices; after each new report the pruner (hyperband.py: W&B's own rule, as an Optuna pruner; why
not Optuna's successive halving is said there) decides. A pruned trial gets SIGTERM, checkpoints, and is recorded
`pruned`: not a failure, not retried; its waiting seeds are not started. Grid and random sweeps keep a study for
the pruner alone (one study trial per parameter combination, its parameters in the trial's user attributes): the
pruner needs only the values reported, and the study keeps them across re-runs.

Resuming: a sweep trial that was running when the sweep died is resumed from its checkpoint and keeps reporting
to its study trial, from the first step not reported yet; a study trial asked but not yet written to sweep.json
gets its sweep trials then; one whose sweep trials all ended is told then.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from shared.cli.sweep.spec import Parameter, SweepSpec, hyperband_bands, quantize
from shared.cli.sweep.state import SweepState, find_run_dir
from shared.cli.sweep.trials import Trial
from shared.errors import ConfigError
from shared.tracking import read_metrics, read_summary

STUDY_FILE = "study.journal"
PLOT_FILE = "sweep_objective.png"
STARTUP_TRIALS = 5  # TPE's random draws before it models the results (Optuna's default, 10, suits 100 trials)
# normal and log_normal are searched through their quantile u: x = mu + sigma * Phi^-1(u), u uniform in
# [QUANTILE, 1 - QUANTILE] (4.75 sigma either side), so the search's prior is W&B's normal.
QUANTILE = 1e-6
PRIMITIVE = (type(None), bool, int, float, str)  # what Optuna's categorical distribution holds


@dataclass(frozen=True)
class Mapped:
    """A W&B parameter as Optuna searches it: `distribution`, and `decode` from Optuna's value to the trial's."""

    distribution: Any  # an optuna.distributions.BaseDistribution
    decode: Callable[[Any], Any]


def map_parameter(p: Parameter, source: str = "") -> Optional[Mapped]:
    """Optuna's counterpart of one W&B distribution; None for a constant, which the study does not search.

    categorical -> CategoricalDistribution(values) (values that are not None/bool/int/float/str: their JSON
    text); int_uniform -> IntDistribution(min, max); uniform -> FloatDistribution(min, max); log_uniform_values
    -> FloatDistribution(min, max, log=True); log_uniform (W&B's bounds are natural logs) -> FloatDistribution(
    exp(min), exp(max), log=True); q_uniform -> the multiples of q in [min, max], FloatDistribution(step=q), or
    IntDistribution(step=q) for integer q and bounds (W&B rounds a uniform draw, which can land one q outside);
    q_log_uniform_values -> FloatDistribution(min, max, log=True), rounded to q (Optuna has no log with step);
    normal, log_normal -> their quantile (see QUANTILE), exp'ed for log_normal. A ConfigError (exit 2) names
    the key when no value fits.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    d, low, high = p.distribution, p.min, p.max
    if d == "constant":
        return None
    if p.values is not None:
        if all(isinstance(v, PRIMITIVE) for v in p.values):
            return Mapped(CategoricalDistribution(p.values), lambda v: v)
        return Mapped(CategoricalDistribution([json.dumps(v) for v in p.values]), json.loads)
    if d == "int_uniform":
        return Mapped(IntDistribution(int(low), int(high)), int)
    if d == "uniform":
        return Mapped(FloatDistribution(low, high), float)
    if d in ("log_uniform", "log_uniform_values"):
        low, high = (math.exp(low), math.exp(high)) if d == "log_uniform" else (low, high)
        return Mapped(FloatDistribution(low, high, log=True), float)
    if d == "q_log_uniform_values":
        return Mapped(FloatDistribution(low, high, log=True), lambda v: quantize(v, p.q))
    if d == "q_uniform":
        first, last = math.ceil(round(low / p.q, 9)) * p.q, math.floor(round(high / p.q, 9)) * p.q
        if first > last:
            raise ConfigError(f"{source}: parameters.{p.key}: no multiple of q={p.q} lies in [{low}, {high}]")
        if all(float(x).is_integer() for x in (p.q, first, last)):
            return Mapped(IntDistribution(int(first), int(last), step=int(p.q)), int)
        return Mapped(FloatDistribution(first, last, step=p.q), lambda v: quantize(v, p.q))
    normal = statistics.NormalDist(p.mu, p.sigma)
    exp = math.exp if d == "log_normal" else float
    return Mapped(FloatDistribution(QUANTILE, 1 - QUANTILE), lambda u: exp(normal.inv_cdf(u)))


def check_search(spec: SweepSpec) -> None:
    """What a study needs of a spec, checked before anything is written: run_cap for bayes, mappable parameters."""
    if spec.method == "bayes" and spec.run_cap is None:
        raise ConfigError(
            f"{spec.path}: method bayes needs run_cap, the number of points to try (each runs with every seed); "
            "running the sweep again with a larger run_cap continues the search"
        )
    for p in spec.parameters:
        map_parameter(p, str(spec.path))


def build_pruner(early_terminate: Optional[dict]):
    """W&B's hyperband (spec.py's early_terminate) as an Optuna pruner; none: a bayes sweep that never prunes."""
    import optuna

    from shared.cli.sweep.hyperband import WandbHyperbandPruner

    if early_terminate is None:
        return optuna.pruners.NopPruner()
    return WandbHyperbandPruner(hyperband_bands(early_terminate), early_terminate["eta"])


def build_sampler(spec: SweepSpec, number: int):
    """TPE, seeded by the spec's sample_seed and the trial's number: the same history asks the same point.
    constant_liar: with several workers, the running trials count as bad, so that they are not asked again."""
    import optuna

    return optuna.samplers.TPESampler(
        seed=spec.sample_seed * 100_003 + number, n_startup_trials=STARTUP_TRIALS, constant_liar=True
    )


def metric_history(run_dir: Optional[Path | str], name: str) -> list[float]:
    """The values of metric `name` a run logged (metrics.jsonl records with a step), in order; W&B's iterations."""
    path = Path(run_dir or "") / "metrics.jsonl"
    if run_dir is None or not path.exists():
        return []
    return [r[name] for r in read_metrics(path) if "step" in r and r.get(name) is not None]


def final_value(run_dir: Optional[Path | str], name: str) -> Optional[float]:
    """A run's metric `name`: its summary value, else the last value it logged (W&B's summary is that too)."""
    history = metric_history(run_dir, name)
    return read_summary(run_dir).get(name, history[-1] if history else None)


class Search:
    """The sweep's study: `ask` new sweep trials (bayes), `observe` the running ones (report, prune), `ended`
    tells the study when all of a point's seeds ended. Only the coordinating process holds it."""

    def __init__(self, spec: SweepSpec, state: SweepState, say: Callable[[str], None]):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep's own lines say what happens
        self.spec, self.state, self.say = spec, state, say
        self.mapped = {p.key: map_parameter(p, str(spec.path)) for p in spec.parameters}
        self.distributions = {k: m.distribution for k, m in self.mapped.items() if m is not None}
        self.study = optuna.create_study(
            storage=JournalStorage(JournalFileBackend(str(spec.dir / STUDY_FILE))),
            study_name=spec.name,
            direction=spec.metric.get("goal", "minimize"),
            sampler=build_sampler(spec, 0),
            pruner=build_pruner(spec.early_terminate),
            load_if_exists=True,
        )
        self.handles: dict[int, Any] = {}  # study trial number -> optuna.Trial, to report to
        self.reported: dict[int, int] = {}  # study trial number -> steps reported so far
        self.pruned: set[int] = set()
        if spec.method == "bayes":  # every record of sweep.json is this sweep's
            state.ids = list(state.trials)
        self._reconcile()

    # ------------------------------------------------------------------ the points
    def remaining(self) -> int:
        """Sweep trials the search may still ask for (bayes: the points left under run_cap, times the seeds)."""
        if self.spec.method != "bayes" or self._target_reached():
            return 0
        return max(self.spec.run_cap - len(self._frozen()), 0) * len(self.spec.seeds)

    def ask(self) -> list[str]:
        """A new point's sweep trials, one per seed, added to sweep.json; [] once run_cap (or the target) is reached."""
        if not self.remaining():
            return []
        self.study.sampler = build_sampler(self.spec, len(self._frozen()))
        trial = self.study.ask(self.distributions)
        self.handles[trial.number] = trial
        return self._add(trial.number, trial.params)

    def starting(self, tid: str) -> None:
        """Before a sweep trial starts: a grid or random combination gets a study trial for the pruner to watch."""
        record = self.state.trials[tid]
        number = record.get("study_trial")
        if self.spec.method == "bayes" or (number is not None and self._is_running(number)):
            return
        from optuna.trial import TrialState

        trial = self.study.ask()
        trial.set_user_attr("params", record["params"])
        self.handles[trial.number] = trial
        for other in self.state.trials.values():
            if other["params"] == record["params"] and other["status"] not in ("done", "pruned"):
                if other.get("study_trial") is not None and self._is_running(other["study_trial"]):
                    self.study.tell(other["study_trial"], state=TrialState.FAIL)  # superseded by the new one
                other["study_trial"] = trial.number

    # ------------------------------------------------------------------ while they run
    def observe(self, running: list[str]) -> list[str]:
        """Report the new logged values of the running trials' points; the running trials the pruner stops
        (their waiting seeds are marked pruned here)."""
        to_stop = []
        for number in sorted({self.state.trials[t]["study_trial"] for t in running} - self.pruned):
            tids = self._group(number)
            histories = [metric_history(self._run_dir(t), self.spec.metric["name"]) for t in tids]
            reached = min(len(h) for h in histories)
            first = self._reported(number)
            if reached <= first:
                continue
            handle = self._handle(number)
            for step in range(first, reached):
                handle.report(statistics.fmean(h[step] for h in histories), step)
            self.reported[number] = reached
            if not handle.should_prune():
                continue
            self.pruned.add(number)
            value = statistics.fmean(h[reached - 1] for h in histories)
            self.say(
                f"{', '.join(tids)} pruned at iteration {reached - 1}: {self.spec.metric['name']}={value:.6g} "
                f"is behind the others there (study trial {number})"
            )
            for tid in tids:
                record = self.state.trials[tid]
                if record["status"] == "running":
                    to_stop.append(tid)
                elif record["status"] in ("pending", "interrupted"):
                    record["status"] = "pruned"
        return to_stop

    def ended(self, tid: str) -> None:
        """A sweep trial reached a final status: tell the study once all of its point's trials have."""
        number = self.state.trials[tid].get("study_trial")
        if number is not None:
            self._tell_if_ended(number)

    def close(self) -> None:
        """The best point so far, and runs/<sweep>/sweep_objective.png."""
        from optuna.trial import TrialState

        done = [t for t in self._frozen() if t.state == TrialState.COMPLETE]
        if done:
            best = self.study.best_trial
            params = best.user_attrs.get("params") or self._decode(best.params)
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
            self.say(
                f"best of {len(done)} finished: study trial {best.number} ({', '.join(self._group(best.number))}): "
                f"{self.spec.metric['name']}={best.value:.6g}  {shown}"
            )
            path = write_objective_plot(self.spec.dir)
            self.say(f"objective per trial: {path}")
        if self.spec.method == "bayes" and self._target_reached():
            self.say(f"metric.target={self.spec.metric['target']} reached: the search asks no more points")

    # ------------------------------------------------------------------ bookkeeping
    def _reconcile(self) -> None:
        """Bring sweep.json and the study together after a coordinator died between writing one and the other."""
        from optuna.trial import TrialState

        groups = self._groups()
        for frozen in self._frozen():
            tids = groups.get(frozen.number, [])
            if frozen.state == TrialState.RUNNING and not tids:
                if self.spec.method == "bayes":  # asked, then the sweep died before sweep.json had it
                    self.say(f"study trial {frozen.number} was asked but never started: running it now")
                    self._add(frozen.number, frozen.params)
                else:  # a grid combination's study trial, never recorded: its trials get a new one
                    self.study.tell(frozen.number, state=TrialState.FAIL)
            elif frozen.state == TrialState.RUNNING:
                self._tell_if_ended(frozen.number)
            elif frozen.state == TrialState.PRUNED:
                for tid in tids:
                    if self.state.trials[tid]["status"] in ("pending", "interrupted", "running"):
                        self.state.trials[tid]["status"] = "pruned"
        self.state.save()

    def _add(self, number: int, raw: dict) -> list[str]:
        params = self._decode(raw)
        tids = [self.state.add(self.spec, Trial(params, seed), number) for seed in self.spec.seeds]
        self.state.ids += tids
        self.state.save()
        return tids

    def _decode(self, raw: dict) -> dict:
        """A study trial's parameters as the sweep's trial gets them, in the spec's order, constants included."""
        return {k: m.decode(raw[k]) if m else self._constant(k) for k, m in self.mapped.items()}

    def _constant(self, key: str) -> Any:
        return next(p.values[0] for p in self.spec.parameters if p.key == key)

    def _tell_if_ended(self, number: int) -> None:
        from optuna.trial import TrialState

        records = [self.state.trials[t] for t in self._group(number)]
        if not self._is_running(number) or any(r["status"] not in ("done", "failed", "pruned") for r in records):
            return
        if any(r["status"] == "pruned" for r in records):
            self.study.tell(number, state=TrialState.PRUNED)
            return
        if any(r["status"] == "failed" for r in records):
            self.study.tell(number, state=TrialState.FAIL)
            return
        values = [final_value(r["run_dir"], self.spec.metric["name"]) for r in records]
        if None in values:
            name = self.spec.metric["name"]
            self.say(f"study trial {number}: a run logged no {name}; the study counts the trial as failed")
            self.study.tell(number, state=TrialState.FAIL)
        else:
            self.study.tell(number, statistics.fmean(values))

    def _target_reached(self) -> bool:
        target = self.spec.metric.get("target")
        if target is None or not any(t.value is not None for t in self._frozen() if t.state.name == "COMPLETE"):
            return False
        best = self.study.best_value
        return best <= target if self.spec.metric.get("goal", "minimize") == "minimize" else best >= target

    def _frozen(self) -> list:
        return self.study.get_trials(deepcopy=False)

    def _is_running(self, number: int) -> bool:
        return self._frozen()[number].state.name == "RUNNING"

    def _groups(self) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for tid, record in self.state.trials.items():
            if record.get("study_trial") is not None:
                groups.setdefault(record["study_trial"], []).append(tid)
        return groups

    def _group(self, number: int) -> list[str]:
        return self._groups().get(number, [])

    def _run_dir(self, tid: str) -> Optional[Path]:
        record = self.state.trials[tid]
        if record["run_dir"] is None:  # the trial made its folder after it started
            found = find_run_dir(self.spec.dir, f"{self.spec.name}-{tid}")
            record["run_dir"] = str(found) if found else None
        return record["run_dir"]

    def _reported(self, number: int) -> int:
        if number not in self.reported:  # a resumed study trial: what an earlier coordinator reported
            steps = self._frozen()[number].intermediate_values
            self.reported[number] = max(steps) + 1 if steps else 0
        return self.reported[number]

    def _handle(self, number: int):
        import optuna

        if number not in self.handles:  # a study trial asked by an earlier coordinator
            self.handles[number] = optuna.trial.Trial(self.study, self._frozen()[number]._trial_id)
        return self.handles[number]


def write_objective_plot(sweep_dir: Path, path: Optional[Path] = None) -> Optional[Path]:
    """A PNG (default sweep_dir/sweep_objective.png) of each study trial's objective against its number, pruned
    trials at their last reported value, and the best so far as a line; None when the folder holds no study."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / STUDY_FILE).exists():
        return None
    import optuna
    from matplotlib.figure import Figure
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    state = json.loads((sweep_dir / "sweep.json").read_text())
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / STUDY_FILE)))
    study = optuna.load_study(study_name=state["name"], storage=storage)
    metric = (state["fingerprint"].get("metric") or {}).get("name", "objective")
    seeds = state["fingerprint"].get("seeds") or [None]
    trials = study.trials
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE"]
    pruned = [
        (t.number, t.intermediate_values[t.last_step])
        for t in trials
        if t.state.name == "PRUNED" and t.last_step is not None
    ]
    pick = min if study.direction.name == "MINIMIZE" else max
    best, line = None, []
    for number, value in done:
        best = value if best is None else pick(best, value)
        line.append((number, best))
    if line and trials[-1].number > line[-1][0]:  # the best so far holds through the trials after it
        line.append((trials[-1].number, best))

    figure = Figure(figsize=(6.4, 4.0), dpi=120, layout="constrained")
    axes = figure.add_subplot()
    if done:
        axes.scatter(*zip(*done), color="tab:blue", label="finished", zorder=3)
        axes.step(*zip(*line), where="post", color="tab:orange", label="best so far")
    if pruned:
        axes.scatter(*zip(*pruned), color="tab:gray", marker="x", label="pruned (last reported value)", zorder=3)
    shown = [v for _, v in done + pruned]
    if shown and min(shown) > 0 and max(shown) > 10 * min(shown):  # pruned trials would flatten the finished ones
        axes.set_yscale("log")
    axes.set_xlabel("trial")
    axes.set_ylabel(metric + (f" (mean over {len(seeds)} seeds)" if len(seeds) > 1 else ""))
    axes.set_title(f"{state['name']}: {study.direction.name.lower()} {metric}")
    axes.xaxis.get_major_locator().set_params(integer=True)
    if done or pruned:
        axes.legend()
    axes.grid(alpha=0.3)
    path = Path(path or sweep_dir / PLOT_FILE)
    figure.savefig(path)
    return path
