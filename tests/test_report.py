"""`pixlab report` on synthetic run folders: the numbers of its table, its curves, its sweep plot and its errors."""

from __future__ import annotations

import csv
import importlib
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from shared.cli import ALGORITHM_MODULES, main
from shared.config import ALGORITHMS
from shared.report import DEFAULT_METRICS, build_sections, find_runs, mean_curve, use_log_axis

from conftest import CONFIGS

STEPS = (100, 200, 300)
LRS = (0.01, 0.1)
SEEDS = (0, 1, 2)


def write_run(folder: Path, config: dict, records: list[dict], summary: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = [json.dumps(r) for r in records] + ([json.dumps({"summary": summary})] if summary else [])
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def error_at(lr: float, seed: int, step: int) -> float:
    """A test error (fraction) that dips at step 200 and rises again, so the best is not the final value."""
    dip = {100: 0.30, 200: 0.05, 300: 0.08}[step]
    return dip + lr * (seed + 1) / 10


@pytest.fixture
def sweep(tmp_path) -> Path:
    """runs/<sweep>/: two learning rates x three seeds of a classifier, test/error at three steps."""
    root = tmp_path / "runs" / "lr-sweep"
    for lr in LRS:
        for seed in SEEDS:
            config = {"algo": "classify", "name": f"lenet-lr{lr}", "seed": seed, "runs_dir": str(root),
                      "optim": {"name": "sgd", "lr": lr}, "tracking": {"group": "lr-sweep", "tags": ["classify"]}}
            records = [{"step": s, "train/loss": 1.0 / s, "test/error": error_at(lr, seed, s)} for s in STEPS]
            write_run(root / f"trial-lr{lr}-seed{seed}", config, records, {"test/error": error_at(lr, seed, STEPS[-1])})
    return root


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["group"]: row for row in csv.DictReader(f)}


def test_table_holds_final_and_best_mean_and_std_over_seeds(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "report.csv")
    assert set(rows) == {f"optim.lr={lr}" for lr in LRS}
    for lr in LRS:
        finals = [100 * error_at(lr, seed, 300) for seed in SEEDS]  # test/error is reported in %
        bests = [100 * min(error_at(lr, seed, s) for s in STEPS) for seed in SEEDS]
        row = rows[f"optim.lr={lr}"]
        assert (row["algo"], row["metric"], row["unit"], row["best_is"], row["seeds"]) == ("classify", "test/error", "%", "min", "3")
        assert float(row["final_mean"]) == pytest.approx(statistics.mean(finals))
        assert float(row["final_std"]) == pytest.approx(statistics.stdev(finals))
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(bests))
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(bests))
        assert (row["last_step_min"], row["last_step_max"]) == ("300", "300")
        assert len(row["runs"].split(";")) == 3
        line = (f"| optim.lr={lr} | 3 | {statistics.mean(finals):.4g} ± {statistics.stdev(finals):.2g} "
                f"| {statistics.mean(bests):.4g} ± {statistics.stdev(bests):.2g} | 300 |")
        assert line in printed and line in (out / "report.md").read_text()
    for name in ("curves-classify-test-error.png", "sweep-classify-test-error.png"):
        image = (out / name).read_bytes()
        assert image.startswith(b"\x89PNG") and len(image) > 10_000, name


def test_group_by_a_config_key_pools_its_runs_and_the_direction_can_be_overridden(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--group-by", "optim.name", "--metric", "train/loss", "--higher-better", "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv").values()
    assert row["group"] == "optim.name=sgd" and row["seeds"] == "6" and row["best_is"] == "max"
    assert float(row["final_mean"]) == pytest.approx(1.0 / STEPS[-1]) and row["final_std"] == "0.0"
    assert float(row["best_mean"]) == pytest.approx(1.0 / STEPS[0])  # the maximum of a falling loss: its first value


def test_the_swept_parameter_and_its_log_axis(sweep):
    (section,) = build_sections(find_runs([sweep]))
    assert section.swept == {"optim.lr": [0.01, 0.1]}  # seed, name, runs_dir and tracking are not swept
    assert [len(g.runs) for g in section.sweep_groups] == [3, 3]
    assert use_log_axis([1e-4, 1e-3, 1e-2]) and not use_log_axis([1e-3, 3e-3, 5e-2]) and not use_log_axis(list(LRS)) and not use_log_axis(["sgd", "adam"])


def test_unequal_step_grids_are_interpolated_inside_the_common_range():
    a = (np.array([0.0, 10, 20]), np.array([0.0, 10, 20]))  # value = step
    b = (np.array([5.0, 15, 25]), np.array([10.0, 30, 50]))  # value = 2 * step
    steps, mean, std = mean_curve([a, b])
    assert steps.tolist() == [5, 10, 15, 20]  # the union of both grids, from the later start to the earlier end
    assert mean == pytest.approx(1.5 * steps) and std == pytest.approx(steps / np.sqrt(2))
    apart = (np.array([30.0]), np.array([1.0]))  # one point after `a` ended: no step range in common
    assert len(mean_curve([a, apart])[0]) == 0


def test_a_metric_logged_only_in_the_summary_is_one_point_at_the_last_step(tmp_path, capsys):
    config = {"algo": "vae", "name": "vae", "seed": 0}
    write_run(tmp_path / "runs" / "vae", config, [{"step": 50, "train/loss": 200.0}], {"train/steps": 60, "test/nll_nats": 88.5})
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--metric", "test/nll_nats", "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv").values()
    assert (row["final_mean"], row["best_mean"], row["last_step_max"], row["unit"]) == ("88.5", "88.5", "60", "nats/image")


@pytest.mark.parametrize(
    "args, named",
    [
        (["{empty}"], "holds no run folders"),
        (["{sweep}", "--metric", "eval/returns"], "eval/returns"),
        (["{sweep}", "--group-by", "optim.betas"], "optim.betas"),
        (["{tmp}/missing"], "does not exist"),
    ],
)
def test_bad_input_exits_2_naming_it_and_writes_nothing(sweep, tmp_path, capsys, args, named):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "report"
    filled = [a.format(empty=tmp_path / "empty", sweep=sweep, tmp=tmp_path) for a in args]
    assert main(["report", *filled, "--out", str(out)]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_every_algorithm_has_a_default_metric_that_leads_its_wandb_section():
    for module in ALGORITHM_MODULES:
        importlib.import_module(module)
    layout = yaml.safe_load((CONFIGS / "wandb" / "workspace.yaml").read_text())
    sections = {section["name"]: section for section in layout["sections"]}
    assert set(sections) == set(DEFAULT_METRICS) == set(ALGORITHMS)
    for algo, section in sections.items():
        assert section["filter"] == {"tags": [algo]}
        assert section["panels"][0]["metric"] in DEFAULT_METRICS[algo]
