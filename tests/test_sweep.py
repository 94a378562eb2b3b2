"""Sweeps: W&B sweep YAML -> trials, bad specs refused before anything is written, crashing trials
isolated and retried, resume, the submitit backend through its local executor, and the W&B backend's
refusal when it cannot reach a server."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import CONFIGS

import shared.classify  # noqa: F401  (registers algo: classify)
from shared.cli import main, run_trial
from shared.cli.sweep import expand, find_run_dir, load_spec, run_sweep
from shared.run import latest_checkpoint, list_checkpoints
from shared.tracking import read_metrics, read_summary

DIGITS = str(CONFIGS / "classify" / "lenet5_digits.yaml")
TINY = [
    "train.max_steps=6",
    "train.batch_size=64",
    "train.eval_batch_size=360",
    "checkpoint.every=3",
    "tracking.wandb=disabled",
]


def write_spec(folder: Path, **spec) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump({"config": DIGITS, "overrides": TINY} | spec, sort_keys=False))
    return path


def records(result) -> dict:
    return {r["params"].get("optim.lr"): r for r in result.trials}


# ----------------------------------------------------------------------------------------- parsing
def test_grid_is_the_product_of_values_in_spec_order_crossed_with_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(
        write_spec(
            tmp_path,
            name="grid",
            method="grid",
            program="train.py",  # W&B's key: accepted and ignored
            parameters={
                "optim.lr": {"values": [0.001, 0.01]},
                "train": {"parameters": {"batch_size": {"values": [32, 64]}}},  # W&B's nesting: train.batch_size
                "optim.name": {"value": "sgd"},
            },
            seeds=[3, 5],
        )
    )
    trials = expand(spec)
    assert [(t.params, t.seed) for t in trials] == [
        ({"optim.lr": lr, "train.batch_size": bs, "optim.name": "sgd"}, seed)
        for lr in (0.001, 0.01)
        for bs in (32, 64)
        for seed in (3, 5)
    ]
    assert any("`program` is ignored" in note for note in spec.notes)
    overrides = trials[1].overrides(spec, "t001")
    assert overrides[: len(TINY)] == TINY
    assert overrides[len(TINY) :] == [
        "optim.lr=0.001",
        "train.batch_size=32",
        "optim.name=sgd",
        "seed=5",
        f"runs_dir={tmp_path.resolve() / 'runs' / 'grid'}",
        "name=grid-t001",
        "tracking.group=grid",
    ]


def test_random_draws_are_seeded_and_inside_their_distributions(tmp_path):
    parameters = {
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "optim.momentum": {"distribution": "uniform", "min": 0.5, "max": 0.99},
        "train.batch_size": {"min": 16, "max": 64},  # two integers and no distribution: int_uniform, as in W&B
        "optim.weight_decay": {"distribution": "q_uniform", "min": 0.0, "max": 0.01, "q": 0.002},
        "optim.name": {"values": ["sgd", "adam"], "probabilities": [0.25, 0.75]},
    }

    def draw(seed):
        return expand(
            load_spec(write_spec(tmp_path, method="random", run_cap=400, sample_seed=seed, parameters=parameters))
        )

    trials = draw(0)
    assert len(trials) == 400 and all(t.seed is None for t in trials)  # no seeds: each trial keeps the config's seed
    assert [t.params for t in trials] == [t.params for t in draw(0)]
    assert [t.params for t in trials] != [t.params for t in draw(1)]
    lrs = [t.params["optim.lr"] for t in trials]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs)
    assert (
        0.4 < sum(lr < math.sqrt(1e-4 * 1e-1) for lr in lrs) / len(lrs) < 0.6
    )  # uniform in log space: half below the geometric mean
    assert all(0.5 <= t.params["optim.momentum"] <= 0.99 for t in trials)
    sizes = [t.params["train.batch_size"] for t in trials]
    assert all(isinstance(s, int) and 16 <= s <= 64 for s in sizes) and {16, 64} <= set(sizes)
    decays = {t.params["optim.weight_decay"] for t in trials}
    assert decays <= {0.0, 0.002, 0.004, 0.006, 0.008, 0.01} and len(decays) == 6
    assert 0.65 < sum(t.params["optim.name"] == "adam" for t in trials) / len(trials) < 0.85


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"method": "grid", "paramters": {}}, "unknown key 'paramters' (did you mean 'parameters'?)"),
        ({"method": "grdi"}, "method='grdi' is not a valid choice (did you mean 'grid'?)"),
        (
            {
                "method": "random",
                "run_cap": 2,
                "parameters": {"optim.lr": {"distribution": "uniform", "min": 0.1, "max": 0.01}},
            },
            "parameters.optim.lr: min=0.1 is greater than max=0.01",
        ),
        (
            {"parameters": {"optim.lr": {"vales": [0.1]}}},
            "unknown key 'parameters.optim.lr.vales' (did you mean 'values'?)",
        ),
        ({"parameters": {"optim.lrr": {"values": [0.1]}}}, "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        (
            {"parameters": {"optim.lr": {"distribution": "uniform", "min": 0.1, "max": 1.0}}},
            "method grid needs `values` or `value`",
        ),
        ({"method": "random", "parameters": {"optim.lr": {"values": [0.1]}}}, "method random needs run_cap"),
        (
            {
                "method": "bayes",
                "metric": {"name": "test/error"},
                "parameters": {"optim.lr": {"min": 0.001, "max": 0.1}},
            },
            "method bayes needs run_cap, the number of points to try",
        ),
        ({"method": "bayes", "run_cap": 4}, "method bayes needs `metric`, the number it optimizes"),
        (
            {"metric": {"name": "test/error"}, "early_terminate": {"type": "hyperbnd", "min_iter": 2}},
            "early_terminate.type='hyperbnd' is not a valid choice; valid choices: hyperband",
        ),
        (
            {"metric": {"name": "test/error"}, "early_terminate": {"type": "hyperband", "min_itr": 2}},
            "unknown key 'early_terminate.min_itr' (did you mean 'min_iter'?)",
        ),
        (
            {"metric": {"name": "test/error"}, "early_terminate": {"type": "hyperband", "min_iter": 0}},
            "early_terminate.min_iter=0 must be an integer >= 1",
        ),
        (
            {"metric": {"name": "test/error"}, "early_terminate": {"type": "hyperband", "eta": 3}},
            "early_terminate needs `min_iter` (or `max_iter` and `s`)",
        ),
        (
            {"metric": {"name": "test/error"}, "early_terminate": {"type": "hyperband", "max_iter": 2, "s": 1}},
            "early_terminate.max_iter=2 is below eta=3: no band to stop trials at",
        ),
        ({"early_terminate": {"type": "hyperband", "min_iter": 2}}, "early_terminate needs `metric`"),
        (
            {
                "method": "bayes",
                "run_cap": 4,
                "metric": {"name": "test/error"},
                "parameters": {"optim.lr": {"distribution": "q_uniform", "min": 0.1, "max": 0.15, "q": 0.2}},
            },
            "parameters.optim.lr: no multiple of q=0.2 lies in [0.1, 0.15]",
        ),
        ({"seeds": 0}, "seeds=0 must be an integer >= 1"),
        # the spec's own overrides: the message names the spec file and the override
        (
            {"overrides": ["optim.lrr=0.1"]},
            "spec.yaml: override 'optim.lrr=0.1': unknown key 'optim.lrr' (did you mean 'optim.lr'?)",
        ),
        ({"overrides": ["train.max_steps"]}, "spec.yaml: override 'train.max_steps' must look like key=value"),
    ],
)
def test_bad_spec_exits_2_naming_the_problem_before_anything_is_written(tmp_path, monkeypatch, capsys, spec, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", str(write_spec(tmp_path, **spec))]) == 2
    err = capsys.readouterr().err
    assert message in err and "spec.yaml" in err, err
    assert not (tmp_path / "runs").exists()


def test_wandb_backend_says_why_it_cannot_run_offline_or_logged_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = str(
        write_spec(
            tmp_path, method="bayes", metric={"name": "test/error"}, parameters={"optim.lr": {"min": 0.001, "max": 0.1}}
        )
    )
    assert main(["sweep", spec, "--backend", "wandb"]) == 2  # conftest sets WANDB_MODE=offline
    assert "W&B is switched off here (WANDB_MODE=offline)" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no W&B settings: not logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("NETRC", raising=False)
    assert main(["sweep", spec, "--backend", "wandb"]) == 2
    assert "not logged in to W&B: run `wandb login`" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "content, problem",
    [
        (
            b'{"format": 1, "trials": {',
            "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 26 (char 25))",
        ),
        (b'{"format": 1, "name": "\xff"}', "is not UTF-8 text (invalid start byte at byte 23)"),
        (b"[1, 2]", "holds a JSON list, not the sweep's state (an object)"),
        (b'{"format": 7, "trials": {}, "fingerprint": {}}', "has format 7; this pixlab reads format 1"),
        (b'{"format": 1, "fingerprint": {}}', "lacks the key 'trials' or 'fingerprint'"),
        (
            b'{"format": 1, "fingerprint": {}, "trials": {"t000": {"key": "k"}}}',
            "trial t000 lacks the key(s) params, seed, status, attempts, run_dir, errors, wall_time, overrides",
        ),
    ],
)
def test_a_damaged_sweep_json_exits_2_naming_it_and_what_is_wrong(tmp_path, monkeypatch, capsys, content, problem):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path, name="damaged", parameters={"optim.lr": {"value": 0.003}})
    state = tmp_path / "runs" / "damaged" / "sweep.json"
    state.parent.mkdir(parents=True)
    state.write_bytes(content)
    assert main(["sweep", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"pixlab: error: {state.resolve()} {problem}; move it away and run the sweep again" in err, err
    assert state.read_bytes() == content and [p.name for p in state.parent.iterdir()] == ["sweep.json"]


# ----------------------------------------------------------------------------------------- running
def crash_once_or_always(config, overrides, run_dir):
    """The real trial function, with injected crashes: lr 0.01 crashes once after training (its retry
    resumes its folder), lr 0.1 crashes at every attempt before anything is made."""
    if "optim.lr=0.1" in overrides:
        raise ValueError("injected: this trial always fails")
    status = run_trial(config, overrides, run_dir)
    if run_dir is None and "optim.lr=0.01" in overrides:
        raise RuntimeError("injected: a crash after the first attempt trained")
    return status


def test_a_crashing_trial_is_recorded_and_retried_while_the_others_finish(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(
        write_spec(tmp_path, name="crashes", parameters={"optim.lr": {"values": [0.001, 0.01, 0.1]}}, retries=1)
    )
    result = run_sweep(spec, crash_once_or_always, workers=2)
    assert result.status == 1  # a trial failed for good
    trials = records(result)

    fine, once, always = trials[0.001], trials[0.01], trials[0.1]
    assert (fine["status"], fine["attempts"], fine["errors"]) == ("done", 1, [])
    assert (once["status"], once["attempts"]) == ("done", 2)
    assert (
        len(once["errors"]) == 1
        and "RuntimeError: injected: a crash after the first attempt trained" in once["errors"][0]["error"]
    )
    assert "Traceback" in once["errors"][0]["error"]
    meta = json.loads((Path(once["run_dir"]) / "meta.json").read_text())
    assert [r["from_checkpoint"] for r in meta["resumes"]] == [
        "step-000000006.pt"
    ]  # the retry resumed the first attempt's folder
    assert (always["status"], always["attempts"], always["run_dir"]) == ("failed", 2, None)
    assert [e["attempt"] for e in always["errors"]] == [1, 2] and all(
        "ValueError: injected" in e["error"] for e in always["errors"]
    )
    assert "injected: this trial always fails" in (result.dir / f"{always['id']}.log").read_text()
    for record in (fine, once):  # normal run folders, with the sweep's run name and W&B group
        assert read_summary(record["run_dir"])["train/steps"] == 6
        config = yaml.safe_load((Path(record["run_dir"]) / "config.yaml").read_text())
        assert config["name"] == f"crashes-{record['id']}" and config["tracking"]["group"] == "crashes"
    state = json.loads((result.dir / "sweep.json").read_text())
    assert {tid: t["status"] for tid, t in state["trials"].items()} == {r["id"]: r["status"] for r in result.trials}
    err = capsys.readouterr().err
    assert (
        "failed (attempt 1): RuntimeError: injected: a crash after the first attempt trained; retrying from its checkpoint"
        in err
    )
    assert "sweep crashes: 2 done, 0 running, 1 failed, 0 pending" in err


def test_running_a_sweep_again_skips_finished_trials_and_resumes_interrupted_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path, name="resumed", parameters={"optim.lr": {"value": 0.003}}, seeds=2)
    first = run_sweep(load_spec(path), run_trial, workers=2)
    assert first.status == 0 and [r["status"] for r in first.trials] == ["done", "done"]
    folders = sorted(p.name for p in first.dir.iterdir() if p.is_dir())

    # The coordinator "died" while the second seed ran: its state says running, its last checkpoint is gone.
    state = json.loads((first.dir / "sweep.json").read_text())
    cut = first.trials[1]
    state["trials"][cut["id"]]["status"] = "running"
    (first.dir / "sweep.json").write_text(json.dumps(state))
    latest_checkpoint(cut["run_dir"]).unlink()
    assert [p.name for p in list_checkpoints(cut["run_dir"])] == ["step-000000003.pt"]

    again = run_sweep(load_spec(path), run_trial, workers=2)
    assert again.status == 0 and [r["status"] for r in again.trials] == ["done", "done"]
    assert sorted(p.name for p in again.dir.iterdir() if p.is_dir()) == folders  # no new run folder
    assert [r["attempts"] for r in again.trials] == [1, 2]  # the finished trial was skipped
    meta = json.loads((Path(cut["run_dir"]) / "meta.json").read_text())
    assert [r["from_checkpoint"] for r in meta["resumes"]] == ["step-000000003.pt"]
    steps = [r["step"] for r in read_metrics(Path(cut["run_dir"]) / "metrics.jsonl") if "step" in r]
    assert (
        steps == sorted(steps) and read_summary(cut["run_dir"])["train/steps"] == 6
    )  # logged once, continued to the end

    # More seeds extend the sweep: only the new trials run. A changed spec is refused, nothing touched.
    path.write_text(path.read_text().replace("seeds: 2", "seeds: 3"))
    more = run_sweep(load_spec(path), run_trial, workers=2)
    assert [(r["seed"], r["attempts"]) for r in more.trials] == [(0, 1), (1, 2), (2, 1)]
    before = (more.dir / "sweep.json").read_text()
    path.write_text(path.read_text().replace("0.003", "0.03"))
    capsys.readouterr()
    assert main(["sweep", str(path)]) == 2
    assert "belongs to a sweep made from a different spec" in capsys.readouterr().err
    assert (more.dir / "sweep.json").read_text() == before


def test_slurm_backend_through_submitits_local_executor(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_spec(
        tmp_path,
        name="slurmed",
        parameters={"optim.lr": {"value": 0.002}},
        slurm={"time": 5, "cpus": 1, "partition": "cpu"},
    )
    assert main(["sweep", str(path), "--backend", "slurm"]) == 2  # no Slurm on this machine
    assert (
        "this machine has no Slurm (sbatch not found)" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    )

    path.write_text(path.read_text().replace("partition: cpu", "partition: cpu\n  cluster: local"))
    result = run_sweep(load_spec(path), run_trial, backend="slurm")
    assert result.status == 0 and [r["status"] for r in result.trials] == ["done"]
    run_dir = Path(result.trials[0]["run_dir"])
    assert run_dir == find_run_dir(result.dir, "slurmed-t000") and read_summary(run_dir)["train/steps"] == 6
    assert list((result.dir / "slurm").glob("*_submitted.pkl"))  # submitit's own job files
    assert json.loads((result.dir / "sweep.json").read_text())["backend"] == "slurm"


def _trial_that_waits_for_a_signal(config, overrides, run_dir):
    """A stand-in trial: says it is ready (a file at `config`), then returns 128 + the first SIGINT or SIGTERM."""
    got = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda s, frame: got.append(s))
    Path(config).write_text("ready")
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    return 128 + got[0] if got else 0


def test_slurm_pool_stop_signals_the_one_job_which_ends_in_its_own_time(tmp_path):
    import cloudpickle

    from shared.cli.sweep.backends import SlurmPool, TrialJob

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)  # submitit's job cannot import tests/: the trial goes by value
    try:
        pool = SlurmPool(_trial_that_waits_for_a_signal, tmp_path / "slurm", {"cluster": "local"}, "stopped")
        ready = tmp_path / "ready"
        pool.start("t000", TrialJob(str(ready), (), None, str(tmp_path / "t000.log"), 1))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), list((tmp_path / "slurm").glob("*.err"))
    assert pool.wait(0.2) == []  # still waiting for its signal
    pool.stop("t000")
    ended = pool.wait(30)
    assert ended == [("t000", {"status": 128 + signal.SIGINT, "error": None, "retry": True})]  # submitit's SIGINT


@pytest.mark.slow
def test_ctrl_c_checkpoints_every_running_trial_and_marks_them_interrupted(tmp_path):
    spec = write_spec(tmp_path, name="stopped", parameters={"optim.lr": {"values": [0.001, 0.003]}})
    spec.write_text(spec.read_text().replace("train.max_steps=6", "train.epochs=500"))  # long enough to be stopped
    sweep = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "sweep", str(spec), "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        len(list((tmp_path / "runs" / "stopped").glob("*/checkpoints/step-*.pt"))) < 2 and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, err[-3000:]
    assert "sweep stopped by signal 2; run the same command again to resume it" in err
    state = json.loads((tmp_path / "runs" / "stopped" / "sweep.json").read_text())
    assert [t["status"] for t in state["trials"].values()] == ["interrupted", "interrupted"]
    for tid, trial in state["trials"].items():
        assert (
            latest_checkpoint(trial["run_dir"]) is not None
            and read_summary(trial["run_dir"]) == {}
            and trial["errors"] == []
        )
        log = (tmp_path / "runs" / "stopped" / f"{tid}.log").read_text()
        assert f"stopped by signal 2; checkpoint saved. Continue with: pixlab resume {trial['run_dir']}" in log
