"""LeNet-5 end to end through the real CLI: files written, W&B offline, eval, SIGTERM + resume, divergence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from shared.cli import main
from shared.run import latest_checkpoint, load_checkpoint
from shared.tracking import read_metrics

from conftest import CONFIGS, run_cli, only_run_dir
from wandb_records import offline_run

DIGITS = str(CONFIGS / "classify" / "lenet5_digits.yaml")
MNIST = str(CONFIGS / "classify" / "lenet5_mnist.yaml")
VOLATILE = {"wall_time", "train/images_per_s"}  # wall-clock figures, different in every run


def test_train_digits_writes_the_run_and_eval_agrees(tmp_path):
    result = run_cli("train", DIGITS, "train.epochs=4", "seed=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 9 and losses[-1] < losses[0] / 4
    tests = [r for r in records if "test/error" in r]
    assert [r["step"] for r in tests] == [23, 46, 69, 92]  # one per epoch of ceil(1437 / 64) steps
    summary = records[-1]["summary"]
    assert summary["test/error"] == tests[-1]["test/error"] < 0.1 and summary["train/steps"] == 92

    meta = json.loads((run / "meta.json").read_text())
    assert meta["command"][-3:] == [DIGITS, "train.epochs=4", "seed=1"] and meta["seed"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] != []
    assert list((run / "media").glob("test_mistakes-*.png"))

    written = offline_run(run)
    assert written["run"].run_group == "lenet5-digits" and list(written["run"].tags) == ["classify", "digits", "lenet5"]
    assert written["config"]["train"]["epochs"] == 4 and written["config"]["seed"] == 1
    assert written["summary"]["test/error"] == summary["test/error"]
    assert written["summary"]["train/loss"] == losses[-1]

    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["step"] == 92 and metrics["test/error"] == summary["test/error"]


def test_sigterm_then_resume_ends_exactly_like_an_uninterrupted_run(tmp_path):
    common = ["train.epochs=6", "tracking.wandb=disabled", "checkpoint.every=1000"]
    assert main(["train", DIGITS, *common, f"runs_dir={tmp_path / 'straight'}"]) == 0
    straight = only_run_dir(tmp_path / "straight")

    env = os.environ | {"WANDB_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "train", DIGITS, *common, f"runs_dir={tmp_path / 'stopped'}"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    metrics_file = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # stop it mid-epoch, once it has logged step 50
        found = list((tmp_path / "stopped").glob("*/metrics.jsonl"))
        if found and any(r.get("step", 0) >= 50 for r in read_metrics(found[0])):
            metrics_file = found[0]
            break
        time.sleep(0.05)
    assert metrics_file is not None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    stopped = metrics_file.parent
    stopped_at = load_checkpoint(latest_checkpoint(stopped))["step"]
    assert 50 <= stopped_at < 138, stopped_at
    assert f"pixlab resume {stopped}" in stderr

    resumed = run_cli("resume", str(stopped), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    final_a = load_checkpoint(latest_checkpoint(straight))
    final_b = load_checkpoint(latest_checkpoint(stopped))
    assert final_a["step"] == final_b["step"] == 138
    for name, tensor in final_a["state"]["model"].items():
        assert torch.equal(tensor, final_b["state"]["model"][name]), name

    def comparable(run_dir):
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in read_metrics(run_dir / "metrics.jsonl")]

    assert comparable(stopped) == comparable(straight)
    assert json.loads((stopped / "meta.json").read_text())["resumes"][0]["from_checkpoint"] == f"step-{stopped_at:09d}.pt"


def test_divergence_exits_1_with_a_clear_message_and_keeps_the_folder(tmp_path):
    result = run_cli("train", DIGITS, "optim.name=sgd", "optim.lr=1e12", "tracking.wandb=disabled", cwd=tmp_path)
    assert result.returncode == 1
    assert "pixlab: error: train/loss is nan at step 10: training diverged" in result.stderr
    assert (only_run_dir(tmp_path / "runs") / "config.yaml").exists()


def test_missing_mnist_exits_2_and_leaves_no_run_folder(tmp_path):
    result = run_cli("train", MNIST, f"data.root={tmp_path / 'empty'}", "data.download=false", cwd=tmp_path)
    assert result.returncode == 2
    assert "train-images-idx3-ubyte.gz is missing (expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873)" in result.stderr
    assert list((tmp_path / "runs").iterdir()) == []


def test_lenet5_loss_falls_in_a_few_hundred_steps_of_real_mnist(tmp_path, mnist_root):
    result = run_cli(
        "train", MNIST, f"data.root={mnist_root}", "train.max_steps=300", "tracking.wandb=disabled", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    records = read_metrics(only_run_dir(tmp_path / "runs") / "metrics.jsonl")
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0] / 3
    assert records[-1]["summary"]["test/error"] < 0.05


@pytest.mark.slow
def test_lenet5_reaches_published_mnist_error(tmp_path, mnist_root):
    """The published figure: LeCun et al. 1998 report 0.95%; the issue asks for <= 1.0%."""
    result = run_cli("train", MNIST, f"data.root={mnist_root}", "tracking.wandb=disabled", cwd=tmp_path, timeout=1800)
    assert result.returncode == 0, result.stderr
    records = read_metrics(only_run_dir(tmp_path / "runs") / "metrics.jsonl")
    assert records[-1]["summary"]["test/error"] <= 0.010


def test_transfer_learning_trains_a_new_head_on_a_frozen_backbone(tmp_path):
    quiet = ["tracking.wandb=disabled", "checkpoint.every=1000"]
    assert main(["train", DIGITS, "train.max_steps=30", *quiet, f"runs_dir={tmp_path / 'source'}"]) == 0
    source = only_run_dir(tmp_path / "source")
    assert main([
        "train", DIGITS, "train.max_steps=20", "seed=5", f"model.init_from={source}", "model.freeze_backbone=true",
        *quiet, f"runs_dir={tmp_path / 'transfer'}",
    ]) == 0
    before = load_checkpoint(latest_checkpoint(source))["state"]["model"]
    after = load_checkpoint(latest_checkpoint(only_run_dir(tmp_path / "transfer")))
    for name, tensor in before.items():
        if name.startswith("output."):
            assert not torch.equal(tensor, after["state"]["model"][name]), name  # a new head, trained
        else:
            assert torch.equal(tensor, after["state"]["model"][name]), name  # the backbone, untouched
    trained = [i for group in after["state"]["optimizer"]["param_groups"] for i in group["params"]]
    assert len(trained) == 2  # output.weight and output.bias alone


def test_two_gloo_processes_under_torchrun_match_one_process(tmp_path):
    common = [DIGITS, "train.max_steps=12", "train.batch_size=64", "tracking.wandb=disabled", "checkpoint.every=1000"]
    assert main(["train", *common, f"runs_dir={tmp_path / 'one'}"]) == 0
    env = os.environ | {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "shared.cli", "train", *common, f"runs_dir={tmp_path / 'two'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    two = only_run_dir(tmp_path / "two")  # rank 1 wrote no folder of its own
    summary = read_metrics(two / "metrics.jsonl")[-1]["summary"]
    assert summary["dist/world_size"] == 2
    assert summary["dist/max_rank_weight_diff"] == 0.0  # the ranks' weights are identical
    assert json.loads((two / "meta.json").read_text())["world_size"] == 2
    one_weights = load_checkpoint(latest_checkpoint(only_run_dir(tmp_path / "one")))["state"]["model"]
    two_weights = load_checkpoint(latest_checkpoint(two))["state"]["model"]
    for name, tensor in one_weights.items():  # equal up to the order of float additions in the all-reduce
        assert torch.allclose(tensor, two_weights[name], rtol=0, atol=2e-6), (name, (tensor - two_weights[name]).abs().max())


def test_ema_weights_are_checkpointed_and_are_what_eval_reports(tmp_path, capsys):
    args = ["train.max_steps=30", "train.ema_decay=0.9", "tracking.wandb=disabled", f"runs_dir={tmp_path}"]
    assert main(["train", DIGITS, *args]) == 0
    run = only_run_dir(tmp_path)
    checkpoint = load_checkpoint(latest_checkpoint(run))
    ema, live = checkpoint["state"]["ema"], checkpoint["state"]["model"]
    assert ema["updates"] == 30
    assert not torch.equal(ema["module"]["f6.weight"], live["f6.weight"])  # an average, not a copy
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test/error"] == read_metrics(run / "metrics.jsonl")[-1]["summary"]["test/error"]


@pytest.mark.parametrize(
    "switches, logged",
    [
        (["accel.precision=bf16", "accel.channels_last=true"], "test/error"),
        (["schedule.name=plateau", "data.val_size=200", "train.epochs=2", "train.max_steps=null"], "val/error"),
        (["data.augment.crop_padding=2", "data.augment.flip=true"], "test/error"),
    ],
)
def test_training_switches_run_end_to_end(tmp_path, switches, logged):
    assert main(["train", DIGITS, "train.max_steps=23", *switches, "tracking.wandb=disabled", f"runs_dir={tmp_path}"]) == 0
    records = read_metrics(only_run_dir(tmp_path) / "metrics.jsonl")
    assert any(logged in r for r in records)
    assert records[-1]["summary"]["test/error"] < 0.9


def test_plateau_without_a_validation_split_is_refused(tmp_path):
    assert main(["train", DIGITS, "schedule.name=plateau", f"runs_dir={tmp_path}"]) == 2
    assert not tmp_path.joinpath("runs").exists() and list(tmp_path.iterdir()) == []
