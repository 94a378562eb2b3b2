"""`pixlab report` on synthetic run folders: the numbers of its table, its curves, its sweep plot, its statistics
(--stats), the published figure of a reproduce entry, its gallery and its errors."""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CONFIGS, write_run

import shared.cli
from shared import stats
from shared.cli import import_algorithms, main
from shared.cli.report import (
    build_sections,
    common_grid,
    curves_figure,
    describe_metric,
    find_runs,
    improvement_of,
    markdown_gallery,
    markdown_stats,
    use_log_axis,
    wandb_workspace,
)
from shared.config import ALGORITHMS, Metric, RunConfig, register

import_algorithms()  # the registry that report reads (main() fills it too)

STEPS = (100, 200, 300)
LRS = (0.01, 0.1)
SEEDS = (0, 1, 2)


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
            config = {
                "algo": "classify",
                "name": f"lenet-lr{lr}",
                "seed": seed,
                "runs_dir": str(root),
                "optim": {"name": "sgd", "lr": lr},
                "tracking": {"group": "lr-sweep", "tags": ["classify"]},
            }
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
        assert (row["algo"], row["metric"], row["unit"], row["best_is"], row["seeds"]) == (
            "classify",
            "test/error",
            "%",
            "min",
            "3",
        )
        assert float(row["final_mean"]) == pytest.approx(statistics.mean(finals))
        assert float(row["final_std"]) == pytest.approx(statistics.stdev(finals))
        assert float(row["best_mean"]) == pytest.approx(statistics.mean(bests))
        assert float(row["best_std"]) == pytest.approx(statistics.stdev(bests))
        assert (row["last_step_min"], row["last_step_max"]) == ("300", "300")
        assert len(row["runs"].split(";")) == 3
        line = (
            f"| optim.lr={lr} | 3 | {statistics.mean(finals):.4g} ± {statistics.stdev(finals):.2g} "
            f"| {statistics.mean(bests):.4g} ± {statistics.stdev(bests):.2g} | 300 |"
        )
        assert line in printed and line in (out / "report.md").read_text()
    for name in ("curves-classify-test-error.png", "sweep-classify-test-error.png"):
        image = (out / name).read_bytes()
        assert image.startswith(b"\x89PNG") and len(image) > 10_000, name
    assert not (out / "stats-classify-test-error.png").exists() and "mean_low" not in rows["optim.lr=0.1"]
    assert "## Gallery" not in printed  # no run has media


def test_group_by_a_config_key_pools_its_runs_and_the_direction_can_be_overridden(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "report",
                str(sweep),
                "--group-by",
                "optim.name",
                "--metric",
                "train/loss",
                "--higher-better",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (row,) = read_csv(out / "report.csv").values()
    assert row["group"] == "optim.name=sgd" and row["seeds"] == "6" and row["best_is"] == "max"
    assert float(row["final_mean"]) == pytest.approx(1.0 / STEPS[-1]) and row["final_std"] == "0.0"
    assert float(row["best_mean"]) == pytest.approx(1.0 / STEPS[0])  # the maximum of a falling loss: its first value


def test_the_swept_parameter_and_its_log_axis(sweep):
    (section,) = build_sections(find_runs([sweep]))
    assert section.swept == {"optim.lr": [0.01, 0.1]}  # seed, name, runs_dir and tracking are not swept
    assert [len(g.runs) for g in section.sweep_groups] == [3, 3]
    assert (
        use_log_axis([1e-4, 1e-3, 1e-2])
        and not use_log_axis([1e-3, 3e-3, 5e-2])
        and not use_log_axis(list(LRS))
        and not use_log_axis(["sgd", "adam"])
    )


# ----------------------------------------------------------------------------------- --stats
def test_stats_give_each_groups_aggregates_with_intervals_and_the_probability_of_improvement(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(sweep), "--stats", "--out", str(out)]) == 0
    markdown = (out / "report.md").read_text()
    assert markdown in capsys.readouterr().out
    # final test/error in %: lr=0.01: 8.1, 8.2, 8.3; lr=0.1: 9, 10, 11. With three runs the lowest and the highest
    # resample (the same run three times, 1/27 = 3.7% each) hold the 2.5% and 97.5% points, so each interval is
    # [min, max]: for the mean, the median (P(median = min) = 7/27) and the IQM (the mean, for fewer than 4 runs)
    assert "| group | runs | mean | median | IQM |" in markdown
    assert "| optim.lr=0.01 | 3 | 8.2 [8.1, 8.3] | 8.2 [8.1, 8.3] | 8.2 [8.1, 8.3] |" in markdown
    assert "| optim.lr=0.1 | 3 | 10 [9, 11] | 10 [9, 11] | 10 [9, 11] |" in markdown
    # every run at lr=0.01 has the lower error, in every resample
    assert "P(optim.lr=0.01 better than optim.lr=0.1) = 1 [1, 1]" in markdown
    row = read_csv(out / "report.csv")["optim.lr=0.1"]
    assert {k: float(row[k]) for k in ("mean", "mean_low", "mean_high", "median", "iqm_high", "tasks")} == (
        pytest.approx({"mean": 10, "mean_low": 9, "mean_high": 11, "median": 10, "iqm_high": 11, "tasks": 1})
    )
    assert (out / "stats-classify-test-error.png").read_bytes().startswith(b"\x89PNG")


def test_a_group_of_several_configs_is_stratified_by_config_one_run_has_no_interval_nor_a_diverged_one(sweep, tmp_path):
    (section,) = build_sections(find_runs([sweep]), group_by="optim.name")
    (group,) = section.groups
    assert sorted(sorted(task) for task in group.tasks()) == [
        pytest.approx([8.1, 8.2, 8.3]),
        pytest.approx([9, 10, 11]),
    ]
    markdown = markdown_stats(section, [stats.aggregates(group.tasks())], None, "stats.png")
    assert "| optim.name=sgd | 6 (2 tasks) | 9.1 [" in markdown and "Probability of improvement" not in markdown

    for lr, final in ((0.1, 0.25), (10, float("inf"))):  # one run each; the one at lr=10 diverged
        config = {"algo": "classify", "name": "r", "seed": 0, "optim": {"lr": lr}}
        write_run(tmp_path / "single" / f"lr{lr}", config, [{"step": 1, "test/error": final}])
    (section,) = build_sections(find_runs([tmp_path / "single"]))
    estimates = [stats.aggregates(g.tasks()) for g in section.groups]
    assert improvement_of(section) is None  # a value that is not finite: no comparison
    markdown = markdown_stats(section, estimates, None, "stats.png")
    assert "| optim.lr=0.1 | 1 | 25 (no interval) | 25 (no interval) | 25 (no interval) |" in markdown
    assert "| optim.lr=10 | 1 | not finite | not finite | not finite |" in markdown
    assert "Probability of improvement: not computed, a final value is not finite." in markdown


def test_unequal_step_grids_are_interpolated_inside_the_common_range():
    a = (np.array([0.0, 10, 20]), np.array([0.0, 10, 20]))  # value = step
    b = (np.array([5.0, 15, 25]), np.array([10.0, 30, 50]))  # value = 2 * step
    steps, values = common_grid([a, b])
    assert steps.tolist() == [5, 10, 15, 20]  # the union of both grids, from the later start to the earlier end
    assert values == pytest.approx(np.stack([steps, 2 * steps]))
    apart = (np.array([30.0]), np.array([1.0]))  # one point after `a` ended: no step range in common
    assert len(common_grid([a, apart])[0]) == 0


def test_a_metric_logged_only_in_the_summary_is_one_point_at_the_last_step(tmp_path, capsys):
    config = {"algo": "vae", "name": "vae", "seed": 0}
    write_run(
        tmp_path / "runs" / "vae",
        config,
        [{"step": 50, "train/loss": 200.0}],
        {"train/steps": 60, "test/nll_nats": 88.5},
    )
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--metric", "test/nll_nats", "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv").values()
    assert (row["final_mean"], row["best_mean"], row["last_step_max"], row["unit"]) == (
        "88.5",
        "88.5",
        "60",
        "nats/image",
    )


def test_the_summary_figure_is_the_final_value_in_place_of_the_last_curve_point(tmp_path):
    """RAM logs its last weights' test error as it trains and reports its best-validation weights' error, with
    more paths per image, in the summary: the table's final is the reported figure, the best sees it too."""
    config = {"algo": "ram", "name": "ram", "seed": 0}
    records = [{"step": 100, "test/error": 0.030}, {"step": 200, "test/error": 0.020}]
    write_run(tmp_path / "runs" / "ram", config, records, {"train/steps": 200, "test/error": 0.0125})
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "runs"), "--metric", "test/error", "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv").values()
    assert (float(row["final_mean"]), float(row["best_mean"]), row["last_step_max"]) == (1.25, 1.25, "200")
    (section,) = build_sections(find_runs([tmp_path / "runs"]))
    ((steps, values),) = section.groups[0].series
    assert (steps.tolist(), values.tolist()) == ([100, 200], [3.0, 1.25])  # in %, the registered unit


# ----------------------------------------------------------------------------------- published figure, gallery
def test_runs_of_a_reproduce_entry_show_its_published_figure_dashed_and_the_band_is_the_bootstrap_interval(
    sweep, tmp_path
):
    root = tmp_path / "runs" / "reproduce-lenet5-mnist-cpu"  # where `pixlab reproduce lenet5-mnist --budget cpu` runs
    for seed, final in enumerate((0.0, 0.01, 0.05)):  # test/error as logged, a fraction: 0, 1 and 5%
        config = {"algo": "classify", "name": "lenet", "seed": seed, "runs_dir": str(root)}
        write_run(root / f"seed{seed}", config, [{"step": 10, "test/error": 0.5}, {"step": 20, "test/error": final}])
    (section,) = build_sections(find_runs([root]))
    label = "published: 0.95% (LeCun et al. 1998, LeNet-5 without distortions)"
    assert section.published == [(0.95, label)]
    ax = curves_figure(section).axes[0]
    (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(dashed.get_ydata()) == [0.95, 0.95] and dashed.get_label() == label
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["lenet (n=3)", label, "band: 95% bootstrap interval of the mean over seeds"]
    # the band at step 20: the interval of the mean of 0, 1 and 5% is [0, 5] (one std, 2.6, would give [-0.6, 4.6])
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    assert set(vertices[vertices[:, 0] == 20, 1].round(9)) == {0.0, 5.0}

    (other,) = build_sections(find_runs([sweep]))  # a sweep of no reproduce entry: no line
    assert other.published == [] and not [
        line for line in curves_figure(other).axes[0].get_lines() if line.get_linestyle() == "--"
    ]


def test_the_gallery_shows_each_groups_latest_media_file_of_each_key(sweep, tmp_path):
    seed0, seed1 = sweep / "trial-lr0.01-seed0" / "media", sweep / "trial-lr0.01-seed1" / "media"
    seed0.mkdir()
    seed1.mkdir()
    (seed0 / "test_mistakes-000000100.png").write_bytes(b"an older grid")
    (seed1 / "test_mistakes-000000300.png").write_bytes(b"the latest grid")  # logged as test/mistakes (registered)
    (seed0 / "video-000000300.mp4").write_bytes(b"a video")
    (seed1 / "video-000000300.mp4").write_bytes(b"the same step in a later seed")
    (seed0 / ".video-000000400.mp4.tmp-12").write_bytes(b"still being written")
    (seed0 / "glimpses.gif").write_bytes(b"no step in the name")
    (seed0 / "notes.txt").write_text("not media")
    out = tmp_path / "report"
    media = "../runs/lr-sweep/trial-lr0.01-seed{}/media/"
    assert markdown_gallery(build_sections(find_runs([sweep])), out) == "\n".join(
        [
            "## Gallery\n",
            "The latest file of each media key in each group's runs.\n",
            "### classify: optim.lr=0.01\n",  # the other group has no media: no section
            f"- `glimpses` (trial-lr0.01-seed0): [glimpses.gif]({media.format(0)}glimpses.gif)",
            f"- `test/mistakes` (step 300, trial-lr0.01-seed1): "
            f"![test/mistakes]({media.format(1)}test_mistakes-000000300.png)",
            f"- `video` (step 300, trial-lr0.01-seed0): [video-000000300.mp4]({media.format(0)}video-000000300.mp4)",
            "",
        ]
    )


def test_curves_only_leaves_out_the_gallery_and_the_sweep_plot(sweep, tmp_path):
    media = sweep / "trial-lr0.01-seed0" / "media"
    media.mkdir()
    (media / "test_mistakes-000000300.png").write_bytes(b"a grid")
    full, kept = tmp_path / "full", tmp_path / "kept"
    assert main(["report", str(sweep), "--out", str(full)]) == 0
    assert main(["report", str(sweep), "--out", str(kept), "--curves-only"]) == 0
    assert "## Gallery" in (full / "report.md").read_text() and (full / "sweep-classify-test-error.png").exists()
    assert "## Gallery" not in (kept / "report.md").read_text()
    assert sorted(p.name for p in kept.iterdir()) == ["curves-classify-test-error.png", "report.csv", "report.md"]


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


# ----------------------------------------------------------------------------------- the registry
def test_report_reads_units_goals_and_step_units_from_the_registry():
    assert {name: a.scores() for name, a in ALGORITHMS.items()} == {
        "classify": ["test/error", "val/error", "test/loss", "train/loss", "test/errors", "test/attack/error"],
        "ram": ["test/error", "val/error", "train/loss", "train/reward"],
        "dqn": ["eval/return", "eval/hns", "train/episode_return", "train/loss"],
        "reinforce": ["train/return_100", "train/episode_return", "train/loss", "train/hns_100"],
        "pixelcnn": ["test/nll_nats", "test/bits_per_dim", "val/nll_nats", "train/loss"],
        "vae": ["test/elbo_nats", "test/nll_nats", "test/nll_bits_per_dim", "train/loss", "samples/fid_lenet"],
        "dcgan": ["samples/fid_lenet", "samples/is_lenet"],
        "style_transfer": ["train/loss", "train/content_loss", "train/style_loss"],
        "compress": [
            "test/error",
            "test/error_shared",
            "test/error_pruned",
            "test/error_dense",
            "compression/ratio",
            "compression/weights_ratio",
            "bytes/compressed",
            "bytes/stored",
            "test/error_int8",
            "bytes/int8",
            "speed/int8_over_fp32",
            "train/loss",
        ],
    }
    assert {name: a.step_unit for name, a in ALGORITHMS.items() if a.step_unit != "optimizer steps"} == {
        "dqn": "agent steps",
        "reinforce": "agent steps",
    }
    assert describe_metric("test/error", "classify") == Metric("test/error", "minimize", "%", 100)
    assert describe_metric("train/loss", "pixelcnn") == Metric("train/loss", "minimize", "nats/image")
    assert describe_metric("test/nll_nats", "vae") == Metric("test/nll_nats", "minimize", "nats/image", once=True)
    assert describe_metric("eval/return", "dqn", higher_better=False) == Metric("eval/return", "minimize")
    # not registered: the goal guessed from the name, no unit
    assert describe_metric("train/reward_rate", "classify") == Metric("train/reward_rate", "maximize")
    assert describe_metric("train/grad_norm", "unknown-algo") == Metric("train/grad_norm", "minimize")


def test_the_cli_finds_the_modules_that_call_register_at_their_top_level(tmp_path, monkeypatch):
    for package, files in {
        "shared": {"config.py": "def register(name):\n    pass\n", "algo.py": "x = 1\nregister(\n    'a',\n)\n"},
        "rl": {"env.py": "# calls register( in a comment\n", "b.py": "register('b')\n", "sub/c.py": "register('c')\n"},
        "generative": {"a.py": "def f():\n    register('a')\n"},
    }.items():
        for name, text in files.items():
            (tmp_path / package / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / package / name).write_text(text)
    monkeypatch.setattr(shared.cli, "REPO", tmp_path)
    assert shared.cli.algorithm_modules() == ["shared.algo", "rl.b"]
    monkeypatch.undo()
    assert set(ALGORITHMS) == {
        "classify",
        "compress",
        "ram",
        "dqn",
        "reinforce",
        "pixelcnn",
        "vae",
        "dcgan",
        "style_transfer",
    }
    assert sorted(shared.cli.algorithm_modules()) == sorted(a.train.__module__ for a in ALGORITHMS.values())


@dataclass
class ToyConfig(RunConfig):
    algo: str = "toy"


@dataclass
class BrokenConfig(RunConfig):
    algo: str = "broken"


@pytest.fixture
def toy_algorithm():
    """An algorithm registered by this test alone; the registry is restored afterwards."""
    before = dict(ALGORITHMS)
    yield register(
        ToyConfig,
        lambda cfg, run: None,
        metrics=[
            {"name": "eval/points", "goal": "maximize", "unit": "pts", "scale": 10},
            {"name": "train/points", "goal": "maximize"},
            {"name": "train/lr"},
            {"name": "test/final_points", "goal": "maximize", "once": True},
        ],
        step_unit="games",
        media=["board"],
    )
    ALGORITHMS.clear()
    ALGORITHMS.update(before)


def test_a_toy_algorithm_registered_in_a_test_gets_its_report_defaults_and_workspace_section(
    toy_algorithm, tmp_path, capsys
):
    root = tmp_path / "runs"
    for seed in (0, 1):
        records = [{"step": s, "eval/points": 0.1 * s + seed, "train/points": 1.0} for s in (1, 2)]
        write_run(root / f"toy-{seed}", {"algo": "toy", "name": "toy", "seed": seed}, records)
    out = tmp_path / "report"
    assert main(["report", str(root), "--out", str(out)]) == 0
    (row,) = read_csv(out / "report.csv").values()
    assert (row["algo"], row["metric"], row["unit"], row["best_is"]) == ("toy", "eval/points", "pts", "max")
    assert float(row["final_mean"]) == pytest.approx(10 * statistics.mean([0.2, 1.2]))  # logged x scale 10
    assert "## toy: eval/points (pts), higher is better" in capsys.readouterr().out

    # runs that never evaluated: the next metric with a goal; train/lr has none, so it is never the default
    write_run(
        root / "toy-short",
        {"algo": "toy", "name": "short", "seed": 0},
        [{"step": 1, "train/points": 2.0, "train/lr": 0.1}],
    )
    (section,) = build_sections(find_runs([root / "toy-short"]))
    assert (section.metric.name, section.metric.unit, section.metric.higher_better) == ("train/points", "", True)

    layout = yaml.safe_load(wandb_workspace())
    (toy,) = [s for s in layout["sections"] if s["name"] == "toy"]
    assert toy == {
        "name": "toy",
        "step": "games",
        "filter": {"tags": ["toy"]},
        "panels": [
            {"type": "line", "metric": "eval/points", "unit": "x10 = pts", "best": "max"},
            {"type": "line", "metric": "train/points", "best": "max"},
            {"type": "line", "metric": "train/lr"},
            {"type": "runs_table", "columns": ["test/final_points"]},
            {"type": "media", "key": "board"},
        ],
    }


@pytest.mark.parametrize(
    "metrics, message",
    [
        ([{"name": "a/b", "goal": "max"}], "metric 'a/b' has goal='max'; valid: minimize, maximize, None"),
        ([{"name": "train/lr"}], "needs a metric with a goal"),
    ],
)
def test_register_refuses_metrics_report_could_not_use(metrics, message):
    with pytest.raises(TypeError, match=message):
        register(BrokenConfig, lambda cfg, run: None, metrics=metrics)
    assert "broken" not in ALGORITHMS


def test_register_takes_the_name_from_the_config_class_and_refuses_a_class_without_one():
    with pytest.raises(TypeError, match="RunConfig must name its algorithm: algo: str = '<name>'"):
        register(RunConfig, lambda cfg, run: None, metrics=[{"name": "train/loss", "goal": "minimize"}])
    assert "" not in ALGORITHMS


def test_the_wandb_workspace_file_is_the_one_the_registry_generates(tmp_path, capsys):
    committed = (CONFIGS / "wandb" / "workspace.yaml").read_text()
    assert committed == wandb_workspace(), "regenerate it: pixlab report --wandb-workspace configs/wandb/workspace.yaml"
    layout = yaml.safe_load(committed)
    assert [s["name"] for s in layout["sections"]] == sorted(ALGORITHMS)
    for section in layout["sections"]:
        first_best = next(p for p in section["panels"] if "best" in p)
        assert first_best["metric"] == ALGORITHMS[section["name"]].scores()[0]
    assert main(["report", "--wandb-workspace", str(tmp_path / "w.yaml")]) == 0
    assert (tmp_path / "w.yaml").read_text() == committed
    assert main(["report", str(tmp_path), "--wandb-workspace", str(tmp_path / "x.yaml")]) == 2
    assert main(["report"]) == 2
    assert "pixlab report needs RUNS" in capsys.readouterr().err and not (tmp_path / "x.yaml").exists()


# ----------------------------------------------------------------------------------- damaged input
def test_damaged_lines_of_metrics_jsonl_are_skipped_with_a_warning_naming_file_and_line(tmp_path, capsys):
    run = write_run(tmp_path / "runs" / "r", {"algo": "classify", "name": "r", "seed": 0}, [])
    path = run / "metrics.jsonl"
    path.write_bytes(
        b'{"step": 1, "test/error": 0.5}\n'
        b'{"step": 2, "test/err\n'  # cut in the middle
        b'{"step": 3, "test/error": 0.25, "note": "\xff\xfe"}\n'  # not UTF-8
        b'{"step": 4, "test/error": 0.2}\n'
        b'{"step": 5, "test/e'  # a torn last line
    )
    out = tmp_path / "report"
    assert main(["report", str(run), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"pixlab report: {path}, line 2: skipped, not JSON\n" in err
    assert f"pixlab report: {path}, line 3: skipped, not UTF-8\n" in err
    assert f"pixlab report: {path}, line 5: skipped, not JSON (the last line: a write cut short)\n" in err
    (row,) = read_csv(out / "report.csv").values()
    assert (float(row["final_mean"]), row["last_step_max"]) == (pytest.approx(20.0), "4")  # steps 1 and 4 kept


def test_a_metric_logged_as_infinity_or_nan_is_reported_as_not_finite(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, last in ((0, "Infinity"), (1, "0.125")):
        run = write_run(root / f"r{seed}", {"algo": "classify", "name": "r", "seed": seed}, [])
        (run / "metrics.jsonl").write_text(
            f'{{"step": 1, "test/loss": 0.5}}\n{{"step": 2, "test/loss": {last}}}\n{{"step": 3, "test/loss": NaN}}\n'
        )
    out = tmp_path / "report"
    assert main(["report", str(root), "--metric", "test/loss", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (
        f"pixlab report: {root / 'r0'}: test/loss is not finite (inf) from step 2 on: the run diverged" in captured.err
    )
    assert (
        f"pixlab report: {root / 'r1'}: test/loss is not finite (nan) from step 3 on: the run diverged" in captured.err
    )
    assert "| r | 2 | not finite (nan, nan) | 0.3125 ± 0.27 | 3 |" in captured.out  # best: of the finite values
    (row,) = read_csv(out / "report.csv").values()
    assert row["final_mean"] == "nan" and float(row["best_mean"]) == pytest.approx(0.3125)
    assert (out / "curves-classify-test-loss.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("text", [b"algo: [classify\n", b"\xff\xfe: 1\n", b"- a list\n"])
def test_a_malformed_config_yaml_exits_2_naming_it(tmp_path, capsys, text):
    run = write_run(tmp_path / "runs" / "r", {"algo": "classify"}, [{"step": 1, "test/error": 0.5}])
    (run / "config.yaml").write_bytes(text)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 2
    assert str(run / "config.yaml") in capsys.readouterr().err
    assert not (tmp_path / "report").exists()
