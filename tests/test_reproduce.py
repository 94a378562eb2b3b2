"""`pixlab reproduce`: every entry and budget loads, unknown names exit 2, and the smoke budget runs end to
end through the CLI, with measured (from the runs' own summaries) beside published."""

from __future__ import annotations

import csv
import json
import statistics
import sys

import pytest
import torch
from conftest import SHARED_DATA, run_cli, write_run

import shared.cli
import shared.cli.reproduce
from shared.cli import main
from shared.cli.reproduce import (
    BUDGETS,
    README_MARKERS,
    entry_names,
    format_machine,
    format_verdict,
    judge,
    load_entry,
    results_table,
    sweep_spec,
    update_readme,
    write_curve,
)
from shared.cli.sweep import check_trials, expand
from shared.config import ALGORITHMS, REPO, Metric, load_config
from shared.errors import ConfigError
from shared.machine import cpu_isa, cpu_model
from shared.tracking import read_summary
from shared.train.accel import resolve_precision

ISSUE_ENTRIES = {
    "lenet5-mnist",
    "resnet20-cifar10",
    "dqn-nature-pong",
    "reinforce-pong",
    "ram-mnist-6",
    "ram-translated-60",
    "pixelcnn-bmnist",
    "vae-bmnist",
    "dcgan-mnist",
}


shared.cli.import_algorithms()  # entries read their metric's goal, unit and scale from the registry


def test_every_entry_has_a_published_source_and_three_budgets_whose_configs_load():
    assert ISSUE_ENTRIES <= set(entry_names())
    for name in entry_names():
        entry = load_entry(name)
        assert entry.published["source"] and (entry.published["value"] is not None or entry.published.get("text"))
        for budget in BUDGETS:
            spec = sweep_spec(entry, budget)
            trials = expand(spec)
            check_trials(spec, trials)  # each seed's config loads as `pixlab train` would load it
            assert [t.seed for t in trials] == list(range(entry.budgets[budget].seeds))
            assert spec.name == f"reproduce-{name}-{budget}" and spec.metric == {
                "name": entry.metric.name,
                "goal": entry.metric.goal,
            }


def test_an_entrys_metric_is_the_one_its_algorithm_registered():
    lenet, pixelcnn, dqn = load_entry("lenet5-mnist"), load_entry("pixelcnn-bmnist"), load_entry("dqn-nature-pong")
    assert lenet.metric is ALGORITHMS["classify"].metric("test/error")
    assert lenet.metric == Metric("test/error", "minimize", "%", 100)
    assert pixelcnn.metric == Metric("test/nll_nats", "minimize", "nats/image")
    assert dqn.metric == Metric("eval/return", "maximize")
    assert (lenet.shown(0.951), pixelcnn.shown(81.3), dqn.shown(18.94)) == ("0.95%", "81.30 nats/image", "18.9")
    assert sweep_spec(dqn, "smoke").metric == {"name": "eval/return", "goal": "maximize"}


@pytest.mark.parametrize(
    "metric, message",
    [
        (
            "{name: test/eror}",
            "metric.name='test/eror' is not a score that algorithm 'classify' registers (did you mean 'test/error'?)",
        ),
        ("{name: train/lr}", "metric.name='train/lr' is not a score that algorithm 'classify' registers"),
        ('{name: test/error, unit: "%"}', "unknown key 'metric.unit'"),  # the unit is the registry's
    ],
)
def test_an_entry_whose_metric_its_algorithm_does_not_score_exits_2(tmp_path, monkeypatch, capsys, metric, message):
    entry = (shared.cli.reproduce.ENTRIES / "lenet5-mnist.yaml").read_text()
    monkeypatch.setattr(shared.cli.reproduce, "ENTRIES", tmp_path)
    (tmp_path / "bad.yaml").write_text(entry.replace("metric: {name: test/error, decimals: 2}", f"metric: {metric}"))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "bad", "--budget", "smoke"]) == 2
    assert f"{tmp_path / 'bad.yaml'}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_entry_exits_2_naming_the_known_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "lenet5-mnst", "--budget", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "unknown reproduce entry 'lenet5-mnst' (did you mean 'lenet5-mnist'?)" in err and "vae-bmnist" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["lenet5-mnist", "pixelcnn-bmnist"])
def test_reproduce_smoke_end_to_end(tmp_path, name):
    result = run_cli("reproduce", name, "--budget", "smoke", "--workers", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    entry = load_entry(name)
    folder = tmp_path / "runs" / f"reproduce-{name}-smoke"
    measured = json.loads((folder / "reproduce.json").read_text())

    runs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "curve")
    seeds = entry.budgets["smoke"].seeds
    assert len(runs) == seeds and all((r / "config.yaml").exists() and (r / "meta.json").exists() for r in runs)
    by_seed = {json.loads((r / "meta.json").read_text())["seed"]: r for r in runs}
    expected = [read_summary(by_seed[s])[entry.metric.name] * entry.metric.scale for s in range(seeds)]
    assert measured["seeds"] == list(range(seeds)) and measured["values"] == pytest.approx(expected)
    assert measured["summaries"] == {str(s): read_summary(by_seed[s]) for s in range(seeds)}  # every figure kept
    assert measured["mean"] == pytest.approx(statistics.fmean(expected))
    assert measured["std"] == pytest.approx(statistics.stdev(expected))
    assert measured["difference"] == pytest.approx(measured["mean"] - entry.published["value"])
    assert measured["wall_time_s"] > 0 and measured["command"] == f"pixlab reproduce {name} --budget smoke"
    judged = judge(expected, entry.published["value"], entry.metric.goal)
    assert (measured["verdict"], measured["confidence"]) == (judged["verdict"], 0.95)
    assert measured["interval"] == pytest.approx(judged["interval"]) and judged["verdict"] in ("reached", "short")
    host = measured["machine"]  # the trials' machine: this one, 1 torch thread (--threads' default)
    assert host["cpu"] == cpu_model() and host["isa"] == cpu_isa() and host["torch"] == torch.__version__
    assert (host["threads"], host["backend"]) == (1, "local")
    _, cfg = load_config(REPO / entry.config, entry.budgets["smoke"].overrides)
    assert host["precision"] == resolve_precision(cfg.accel.precision, torch.device("cpu"))

    row = [line for line in result.stdout.splitlines() if line.startswith(f"| {name} |")]
    assert len(row) == 1 and f"{expected[0]:.2f}" in row[0] and entry.published["source"] in row[0]
    assert f" | {format_verdict(entry, measured)} | " in row[0]
    assert (folder / "reproduce.md").read_text().strip() == result.stdout.strip()
    with open(folder / "curve" / "report.csv") as f:  # the learning curve of the same metric, over the same seeds
        (curve,) = csv.DictReader(f)
    assert (curve["metric"], int(curve["seeds"])) == (entry.metric.name, seeds)
    assert float(curve["final_mean"]) == pytest.approx(measured["mean"])  # the last logged value is the summary's
    report = (folder / "curve" / "report.md").read_text()
    assert f"Runs from: runs/reproduce-{name}-smoke ({seeds} run folders)" in report and "Gallery" not in report
    assert (folder / "curve" / f"curves-{curve['algo']}-{entry.metric.name.replace('/', '-')}.png").stat().st_size
    readme = results_table(tmp_path / "runs", budgets=("smoke",))
    assert f"`pixlab reproduce {name} --budget smoke`" in readme and f"; {format_machine(measured)} |" in readme
    assert name not in results_table(tmp_path / "runs")  # the README's table leaves smoke runs out

    # --write-readme replaces what lies between the markers and keeps the rest; without them it refuses
    (tmp_path / "README.md").write_text(f"intro\n{README_MARKERS[0]}\nold table\n{README_MARKERS[1]}\noutro\n")
    update_readme(tmp_path / "README.md", tmp_path / "runs")
    assert (
        tmp_path / "README.md"
    ).read_text() == f"intro\n{README_MARKERS[0]}\n{results_table(tmp_path / 'runs')}\n{README_MARKERS[1]}\noutro\n"
    (tmp_path / "NOTES.md").write_text("no markers\n")
    with pytest.raises(ConfigError, match="no results table to replace"):
        update_readme(tmp_path / "NOTES.md", tmp_path / "runs")
    assert (tmp_path / "NOTES.md").read_text() == "no markers\n"


def test_an_entry_whose_metric_comes_once_has_the_curve_its_trainer_logs_along_the_run(tmp_path, monkeypatch):
    # vae-bmnist's IWAE bound is computed once, at the end: its curve is the test ELBO the VAE logs every epoch
    sweep = tmp_path / "runs" / "reproduce-vae-bmnist-cpu"
    for seed in (0, 1):
        config = {"algo": "vae", "name": "vae-bmnist", "seed": seed, "tracking": {"group": sweep.name}}
        records = [{"step": step, "test/elbo_nats": 100 - step / 100 - seed} for step in (100, 200)]
        write_run(sweep / f"t00{seed}", config, records, {"test/nll_nats": 90.0 - seed})
    monkeypatch.chdir(tmp_path)
    write_curve(load_entry("vae-bmnist"), sweep.resolve(), sys.stderr)
    with open(sweep / "curve" / "report.csv") as f:
        rows = [(r["metric"], int(r["seeds"]), float(r["final_mean"])) for r in csv.DictReader(f)]
    assert rows == [("test/elbo_nats", 2, pytest.approx(97.5))]  # the means of 98 and 97, each seed's last epoch


# ----------------------------------------------------------------------------------------- the verdict
# Three seeds: the interval of their mean is [min, max] (the resample of the lowest, or the highest, seed three
# times has probability 1/27 = 3.7%, more than the 2.5% tail).
@pytest.mark.parametrize(
    "values, published, goal, verdict",
    [
        ([0.71, 0.80, 0.68], 0.95, "minimize", "reached"),  # the interval [0.68, 0.80] beats the published error
        ([0.71, 0.80, 0.68], 0.75, "minimize", "reached"),  # it contains it
        ([0.71, 0.80, 0.68], 0.60, "minimize", "short"),  # its lowest end is above it
        ([18.0, 19.0, 20.0], 15.0, "maximize", "reached"),  # the interval [18, 20] beats the published return
        ([18.0, 19.0, 20.0], 20.0, "maximize", "reached"),  # its top end touches it
        ([18.0, 19.0, 20.0], 21.0, "maximize", "short"),
    ],
)
def test_the_verdict_compares_the_interval_with_the_published_figure_in_the_goals_direction(
    values, published, goal, verdict
):
    assert judge(values, published, goal) == {
        "interval": pytest.approx([min(values), max(values)]),
        "confidence": 0.95,
        "verdict": verdict,
    }


def test_one_seed_has_no_interval_and_no_published_figure_no_verdict():
    assert judge([0.7], 0.95, "minimize") == {"interval": None, "confidence": 0.95, "verdict": "single seed"}
    assert judge([1.0, 3.0], None, "minimize")["verdict"] == "n.a."
    assert judge([], 0.95, "minimize") == {"interval": None, "confidence": 0.95, "verdict": "n.a."}


def test_the_table_judges_a_reproduce_json_written_before_verdicts_from_its_seeds(tmp_path):
    old = {  # the fields of a reproduce.json of 2026-11 (runs/reproduce-lenet5-mnist-cpu): no interval, no verdict
        "entry": "lenet5-mnist",
        "model": "LeNet-5",
        "task": "MNIST test error",
        "metric": "test/error",
        "budget": "cpu",
        "about": "the full budget",
        "seeds": [0, 1, 2],
        "values": [0.71, 0.8, 0.68],
        "mean": 0.73,
        "std": 0.0624,
        "trials": 3,
        "published": 0.95,
        "source": "LeCun et al. 1998, LeNet-5 without distortions",
        "published_text": None,
        "difference": -0.22,
        "wall_time_s": 1211.2,
        "wall_time_per_seed_s": 403.7,
        "command": "pixlab reproduce lenet5-mnist --budget cpu",
        "measured": "2026-11-23T03:59:11",
    }
    (tmp_path / "reproduce-lenet5-mnist-cpu").mkdir()
    (tmp_path / "reproduce-lenet5-mnist-cpu" / "reproduce.json").write_text(json.dumps(old))
    header, _, row = results_table(tmp_path).splitlines()
    assert header.split(" | ")[4] == "verdict" and row.split(" | ")[4] == "reached (95% CI [0.68, 0.80]%)"
    entry = load_entry("lenet5-mnist")
    assert format_verdict(entry, old | {"values": [0.71]}) == "single seed"
    assert format_verdict(entry, {k: v for k, v in old.items() if k != "values"}) == "n.a."
    stored = old | {"interval": [0.5, 0.6], "confidence": 0.9, "verdict": "reached"}  # a new file: read as written
    assert format_verdict(entry, stored) == "reached (90% CI [0.50, 0.60]%)"


def _smoke_marks(name: str) -> list:
    """Slow; and skipped without the real MNIST files when the entry's trainer reads MNIST only."""
    marks = [pytest.mark.slow]
    if (
        "MNIST files" in load_entry(name).budgets["smoke"].about
        and not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").exists()
    ):
        marks.append(pytest.mark.skip(reason=f"the real MNIST files are not in {SHARED_DATA / 'mnist'}"))
    return marks


@pytest.mark.parametrize("name", [pytest.param(n, marks=_smoke_marks(n)) for n in entry_names()])
def test_every_smoke_budget_runs(tmp_path, monkeypatch, name):
    monkeypatch.setenv("PIXLAB_DATA", str(SHARED_DATA))
    result = run_cli("reproduce", name, "--budget", "smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads((tmp_path / "runs" / f"reproduce-{name}-smoke" / "reproduce.json").read_text())
    assert measured["mean"] is not None and len(measured["values"]) == load_entry(name).budgets["smoke"].seeds


def test_budgets_share_a_protocol_through_a_yaml_anchor_spliced_into_their_overrides(tmp_path, monkeypatch):
    entry = (shared.cli.reproduce.ENTRIES / "lenet5-mnist.yaml").read_text()
    budgets = entry[entry.index("budgets:") :]
    shared_budgets = """budgets:
  full: {seeds: 3, overrides: [&protocol [optim.lr=0.01, train.batch_size=32], train.epochs=9], about: full}
  cpu: {seeds: 2, overrides: [*protocol, train.epochs=3], about: cpu}
  smoke: {seeds: 1, overrides: [train.epochs=1], about: smoke}
"""
    monkeypatch.setattr(shared.cli.reproduce, "ENTRIES", tmp_path)
    (tmp_path / "shared.yaml").write_text(entry.replace(budgets, shared_budgets))
    loaded = load_entry("shared")
    assert loaded.budgets["full"].overrides == ["optim.lr=0.01", "train.batch_size=32", "train.epochs=9"]
    assert loaded.budgets["cpu"].overrides == ["optim.lr=0.01", "train.batch_size=32", "train.epochs=3"]
    assert loaded.budgets["smoke"].overrides == ["train.epochs=1"]
