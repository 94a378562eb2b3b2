"""Sweeps with an Optuna study (shared/cli/sweep/search.py): W&B's distributions as Optuna's, a bayes study that
a re-run continues, trials pruned by W&B's hyperband, and the mean over seeds as the objective. The trials are
curves that a fake pool writes to metrics.jsonl, one value a poll, so no test waits on a real training."""

from __future__ import annotations

import json
import math
import signal
import statistics
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import CONFIGS
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from PIL import Image

import shared.classify  # noqa: F401  (registers algo: classify, which the specs' base config names)
from shared.cli import run_trial
from shared.cli.sweep import load_spec, run_sweep, search
from shared.cli.sweep.search import PLOT_FILE, STUDY_FILE, build_pruner, map_parameter, write_objective_plot
from shared.cli.sweep.spec import _parse_parameter, hyperband_bands
from shared.run import latest_checkpoint

DIGITS = str(CONFIGS / "classify" / "lenet5_digits.yaml")
ITERATIONS = 4  # values of the metric each fake trial logs
PHI_1 = 0.8413447460685429  # the standard normal's CDF at 1


@pytest.fixture(autouse=True)
def in_tmp_path_without_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the base config's runs_dir, runs/, is relative to the current folder
    monkeypatch.setattr(search, "write_objective_plot", lambda folder: folder / PLOT_FILE)  # drawn once, below


def write_spec(folder: Path, **spec) -> Path:
    path = folder / f"{spec.get('name', 'spec')}.yaml"
    base = {
        "config": DIGITS,
        "metric": {"name": "val/error", "goal": "minimize"},
        "overrides": ["tracking.wandb=disabled"],
    }
    path.write_text(yaml.safe_dump(base | spec, sort_keys=False))
    return path


def error_curve(params: dict, seed: int, iteration: int) -> float:
    """The fake trial's val/error: best at lr = 10**-2.5, falling as it trains, 0.01 worse per seed."""
    return abs(math.log10(float(params["optim.lr"])) + 2.5) + 1 / (iteration + 1) + 0.01 * seed


class CurvePool:
    """A backend whose trials are `error_curve`s: each `wait` logs one more value to every running trial's
    metrics.jsonl; a trial ends with a summary after ITERATIONS values, or with status 143 once stopped.
    `interrupt_at`: the wait call (counted from 1) at which SIGINT reaches the sweep, as a Ctrl-C would."""

    def __init__(self, interrupt_at: int | None = None):
        self.running: dict[str, dict] = {}
        self.started: list[tuple[str, str | None]] = []  # (trial id, the run folder it resumed, or None)
        self.stopped: list[str] = []
        self.waits, self.interrupt_at = 0, interrupt_at

    def start(self, tid, job):
        overrides = dict(o.split("=", 1) for o in job.overrides)
        folder = Path(job.run_dir or Path(overrides["runs_dir"]) / f"20260101-000000-{overrides['name']}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text("{}\n")
        metrics = folder / "metrics.jsonl"
        logged = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        seed = int(overrides.get("seed", 0))
        self.running[tid] = {"folder": folder, "params": overrides, "seed": seed, "logged": logged, "end": None}
        self.started.append((tid, job.run_dir))

    def wait(self, timeout):
        self.waits += 1
        if self.waits == self.interrupt_at:
            signal.raise_signal(signal.SIGINT)
        ended = []
        for tid, trial in list(self.running.items()):
            if trial["end"] is not None:
                ended.append((tid, {"status": trial["end"], "error": None, "retry": True}))
                del self.running[tid]
                continue
            value = error_curve(trial["params"], trial["seed"], trial["logged"])
            with open(trial["folder"] / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": 10 * (trial["logged"] + 1), "val/error": value}) + "\n")
                trial["logged"] += 1
                if trial["logged"] == ITERATIONS:
                    f.write(json.dumps({"summary": {"val/error": value}}) + "\n")
                    trial["end"] = 0
        return ended

    def signal(self, signum):
        for trial in self.running.values():
            trial["end"] = 128 + signum

    def stop(self, tid, signum=15):  # SIGTERM
        self.stopped.append(tid)
        self.running[tid]["end"] = 128 + signum


def study_of(sweep_dir: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep_dir / STUDY_FILE)))
    return optuna.load_study(study_name=None, storage=storage)


def sweep_json(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())["trials"]


# ----------------------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize(
    "body, distribution, decoded",
    [
        ({"values": [16, 32]}, CategoricalDistribution([16, 32]), {32: 32}),
        ({"values": [[1, 2], [3]]}, CategoricalDistribution(["[1, 2]", "[3]"]), {"[3]": [3]}),
        ({"min": 16, "max": 64}, IntDistribution(16, 64), {17: 17}),  # two integers: int_uniform, as in W&B
        ({"distribution": "uniform", "min": 0.5, "max": 0.99}, FloatDistribution(0.5, 0.99), {0.7: 0.7}),
        (
            {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 0.1},
            FloatDistribution(1.0e-4, 0.1, log=True),
            {0.003: 0.003},
        ),
        (  # W&B's log_uniform takes natural logs: ln(1e-4) and ln(0.1)
            {"distribution": "log_uniform", "min": -9.210340371976182, "max": -2.302585092994045},
            FloatDistribution(math.exp(-9.210340371976182), math.exp(-2.302585092994045), log=True),
            {0.003: 0.003},
        ),
        (  # the multiples of q inside [min, max]
            {"distribution": "q_uniform", "min": 0.001, "max": 0.0105, "q": 0.002},
            FloatDistribution(0.002, 0.01, step=0.002),
            {0.006000000000000001: 0.006},
        ),
        ({"distribution": "q_uniform", "min": 10, "max": 100, "q": 8}, IntDistribution(16, 96, step=8), {24: 24}),
        (
            {"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 10},
            FloatDistribution(1, 1000, log=True),
            {123.4: 120, 5.1: 10},
        ),
        (  # searched through its quantile: u = 0.5 is mu, u = Phi(1) is mu + sigma
            {"distribution": "normal", "mu": 1.0, "sigma": 2.0},
            FloatDistribution(1e-6, 1 - 1e-6),
            {0.5: 1.0, PHI_1: 3.0},
        ),
        ({"distribution": "log_normal", "mu": 0.0, "sigma": 1.0}, FloatDistribution(1e-6, 1 - 1e-6), {PHI_1: math.e}),
    ],
)
def test_each_wandb_distribution_maps_to_its_optuna_counterpart(body, distribution, decoded):
    mapped = map_parameter(_parse_parameter("optim.lr", body, "spec.yaml"))
    assert mapped.distribution == distribution
    for raw, value in decoded.items():
        got = mapped.decode(raw)
        assert type(got) is type(value) and got == (pytest.approx(value, rel=1e-12) if type(value) is float else value)


def test_a_constant_is_not_searched_and_hyperband_bands_are_wandbs(tmp_path):
    assert map_parameter(_parse_parameter("optim.lr", {"value": 0.5}, "spec.yaml")) is None
    # W&B's bands for max_iter 27, s 2, eta 3: 27/3 = 9 and 27/9 = 3; for min_iter 2: 2 * 3**k
    et = {"type": "hyperband", "max_iter": 27, "s": 2, "eta": 3}
    spec = load_spec(write_spec(tmp_path, early_terminate=et, parameters={"optim.lr": {"values": [0.1]}}))
    assert hyperband_bands(spec.early_terminate) == [3, 9]
    assert hyperband_bands({"eta": 3, "min_iter": 2})[:4] == [2, 6, 18, 54]


# ----------------------------------------------------------------------------------------- bayes
LR = {"optim.lr": {"distribution": "log_uniform_values", "min": 1.0e-4, "max": 0.1}}


def test_a_bayes_sweep_run_again_continues_its_study_and_asks_what_an_uninterrupted_one_would(tmp_path, capsys):
    path = write_spec(tmp_path, name="bayes", method="bayes", run_cap=3, parameters=LR)
    first = run_sweep(load_spec(path), None, pool=CurvePool())
    assert first.status == 0 and [r["status"] for r in first.trials] == ["done"] * 3
    assert len(study_of(first.dir).trials) == 3

    path.write_text(path.read_text().replace("run_cap: 3", "run_cap: 7"))  # raising run_cap continues the search
    pool = CurvePool()
    again = run_sweep(load_spec(path), None, pool=pool)
    assert again.status == 0 and [r["id"] for r in again.trials] == [f"t{i:03d}" for i in range(7)]
    assert [tid for tid, _ in pool.started] == ["t003", "t004", "t005", "t006"]  # the first three not run again
    study = study_of(again.dir)
    assert [t.number for t in study.trials] == list(range(7)) and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert [r["study_trial"] for r in again.trials] == list(range(7))
    lrs = [r["params"]["optim.lr"] for r in again.trials]
    assert [t.params["optim.lr"] for t in study.trials] == lrs
    assert [t.value for t in study.trials] == [error_curve({"optim.lr": lr}, 0, ITERATIONS - 1) for lr in lrs]

    # The same spec run in one go asks the same seven points: TPE is seeded by sample_seed and the trial number.
    whole = write_spec(tmp_path, name="whole", method="bayes", run_cap=7, parameters=LR)
    assert [r["params"]["optim.lr"] for r in run_sweep(load_spec(whole), None, pool=CurvePool()).trials] == lrs
    assert "objective per trial: " + str(again.dir / PLOT_FILE) in capsys.readouterr().err
    with Image.open(write_objective_plot(again.dir)) as plot:
        assert plot.format == "PNG" and plot.size == (768, 480)


def test_a_trial_running_when_the_sweep_stopped_resumes_into_its_own_study_trial(tmp_path):
    path = write_spec(tmp_path, name="cut", method="bayes", run_cap=2, parameters=LR)
    stopped = run_sweep(load_spec(path), None, pool=CurvePool(interrupt_at=ITERATIONS + 3))  # in the second trial
    assert stopped.status == 130 and [r["status"] for r in stopped.trials] == ["done", "interrupted"]
    assert [t.state.name for t in study_of(stopped.dir).trials] == ["COMPLETE", "RUNNING"]

    pool = CurvePool()
    resumed = run_sweep(load_spec(path), None, pool=pool)
    assert resumed.status == 0 and [r["status"] for r in resumed.trials] == ["done", "done"]
    assert pool.started == [("t001", resumed.trials[1]["run_dir"])]  # resumed from its folder, not started anew
    study = study_of(resumed.dir)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # no third trial for it
    lr = resumed.trials[1]["params"]["optim.lr"]
    assert study.trials[1].intermediate_values == {i: error_curve({"optim.lr": lr}, 0, i) for i in range(ITERATIONS)}


def test_a_study_trial_asked_but_never_written_to_sweep_json_is_run_on_the_next_run(tmp_path):
    path = write_spec(tmp_path, name="asked", method="bayes", run_cap=2, parameters=LR)
    run_sweep(load_spec(path), None, pool=CurvePool(interrupt_at=1))  # stopped before the first trial logged
    sweep_dir = tmp_path / "runs" / "asked"
    state = json.loads((sweep_dir / "sweep.json").read_text())
    state["trials"] = {}  # as if the sweep had died between the study's ask and writing sweep.json
    (sweep_dir / "sweep.json").write_text(json.dumps(state))

    again = run_sweep(load_spec(path), None, pool=CurvePool())
    study = study_of(sweep_dir)
    assert [(r["id"], r["study_trial"], r["status"]) for r in again.trials] == [
        ("t000", 0, "done"),
        ("t001", 1, "done"),
    ]
    assert again.trials[0]["params"]["optim.lr"] == study.trials[0].params["optim.lr"]
    assert len(study.trials) == 2


def test_with_seeds_the_study_sees_the_mean_over_them(tmp_path):
    path = write_spec(tmp_path, name="seeded", method="bayes", run_cap=2, seeds=[0, 1], parameters=LR)
    result = run_sweep(load_spec(path), None, workers=2, pool=CurvePool())
    assert [(r["study_trial"], r["seed"], r["status"]) for r in result.trials] == [
        (0, 0, "done"),
        (0, 1, "done"),
        (1, 0, "done"),
        (1, 1, "done"),
    ]
    for trial in study_of(result.dir).trials:
        lr = trial.params["optim.lr"]
        assert [r["params"]["optim.lr"] for r in result.trials if r["study_trial"] == trial.number] == [lr, lr]
        mean = [statistics.fmean(error_curve({"optim.lr": lr}, s, i) for s in (0, 1)) for i in range(ITERATIONS)]
        assert trial.value == mean[-1] and trial.intermediate_values == dict(enumerate(mean))


# ----------------------------------------------------------------------------------------- early termination
def test_hyperband_prunes_a_grid_trial_that_falls_behind_and_records_it_as_pruned(tmp_path, capsys):
    path = write_spec(
        tmp_path,
        name="pruned",
        method="grid",
        parameters={"optim.lr": {"values": [0.003, 0.001, 0.1]}},
        early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2},
    )
    pool = CurvePool()
    result = run_sweep(load_spec(path), None, pool=pool)
    # W&B's band 1 (the second value): 0.1's 2.0 is behind the second best of {0.52, 1.0, 2.0}; 0.001's 1.0 was
    # the second best of {0.52, 1.0} there, and at band 2 of {0.36, 0.83}: it ran to its end.
    assert result.status == 0 and pool.stopped == ["t002"]
    assert [r["status"] for r in result.trials] == ["done", "done", "pruned"]
    behind = result.trials[2]
    assert (behind["attempts"], behind["errors"]) == (1, [])
    assert sweep_json(result.dir)["t002"]["status"] == "pruned"
    study = study_of(result.dir)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert study.trials[2].intermediate_values == {0: 2.5, 1: 2.0}
    assert study.trials[2].user_attrs["params"] == {"optim.lr": 0.1}
    err = capsys.readouterr().err
    assert "t002 pruned at iteration 1: val/error=2 is behind the others there (study trial 2)" in err
    assert "sweep pruned: 2 done, 1 pruned, 0 running, 0 failed, 0 pending" in err

    again = CurvePool()  # a pruned trial is final: a re-run starts nothing
    assert run_sweep(load_spec(path), None, pool=again).status == 0 and again.started == []


@pytest.mark.parametrize(
    "history, pruned",
    [
        ([0.15, 0.25], True),  # behind the second best at band 1, 0.4
        ([0.45, 0.25], False),  # its best so far, 0.45, is what counts, not its value at the band
        ([0.15, 0.45], False),  # itself the second best
        ([0.15], False),  # band 1 not reached yet
    ],
)
def test_the_pruner_follows_wandbs_hyperband_rule_on_hand_made_histories(history, pruned):
    study = optuna.create_study(direction="maximize")
    for others in ([0.1, 0.5, 0.6], [0.2, 0.3], [0.3, 0.4]):
        trial = study.ask()
        for step, value in enumerate(others):
            trial.report(value, step)
    trial = study.ask()
    for step, value in enumerate(history):
        trial.report(value, step)
    # bands 1, 3, 9, ...: at band 1 the values are 0.5, 0.4, 0.3 and the trial's own; n = 4, eta = 3: the
    # threshold is the value ranked int(4 / 3) = 1 from the best
    pruner = build_pruner({"eta": 3, "min_iter": 1})
    assert pruner.prune(study, study.trials[-1]) is pruned


@pytest.mark.slow
def test_a_real_trial_falling_behind_gets_sigterm_checkpoints_and_is_recorded_pruned(tmp_path):
    path = write_spec(
        tmp_path,
        name="real",
        method="grid",
        parameters={"optim.lr": {"values": [0.003, 0.002, 1.0e-5]}},  # Adam at 1e-5 barely moves in 2 epochs
        early_terminate={"type": "hyperband", "min_iter": 1, "eta": 2},
        overrides=["train.epochs=8", "data.val_size=300", "tracking.wandb=disabled"],
    )
    result = run_sweep(load_spec(path), run_trial)
    assert result.status == 0 and [r["status"] for r in result.trials] == ["done", "done", "pruned"]
    pruned = result.trials[2]
    log = (result.dir / "t002.log").read_text()
    assert f"stopped by signal 15; checkpoint saved. Continue with: pixlab resume {pruned['run_dir']}" in log
    assert latest_checkpoint(pruned["run_dir"]) is not None and pruned["errors"] == []
    reported = study_of(result.dir).trials[2].intermediate_values
    assert 2 <= len(reported) < 8  # stopped at band 1 (its second epoch), or band 2 if a poll came late
