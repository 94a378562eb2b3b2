"""`pixlab bench classify` runs both loops and prints its figures (speed goals live in the bench, not here)."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli


def test_bench_classify_prints_both_loops_and_their_ratio(tmp_path):
    result = run_cli("bench", "classify", "--json", "--models", "lenet5", "--repeats", "1", "--steps-scale", "0.05", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    (row,) = report["results"]
    assert row["model"] == "lenet5" and row["batch_size"] == 128 and row["steps_timed"] == 7
    assert row["pixlab_images_per_s"] > 0 and row["dataloader_images_per_s"] > 0
    assert abs(row["ratio"] - row["pixlab_images_per_s"] / row["dataloader_images_per_s"]) < 0.01
    data = row["data_path_only"]
    assert data["pixlab_batches_per_s"] > 0 and data["dataloader_batches_per_s"] > 0


def test_bench_rejects_an_unknown_model(tmp_path):
    result = run_cli("bench", "classify", "--models", "lenet6", cwd=tmp_path)
    assert result.returncode == 2 and "--models: unknown ['lenet6']" in result.stderr


def test_bench_dqn_runs_ours_and_sb3_and_reports_replay_sizes(tmp_path):
    pytest.importorskip("stable_baselines3")
    result = run_cli("bench", "dqn", "--json", "--steps", "1000", "--learning-starts", "200", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    ours, theirs = report["pixlab"], report["sb3"]
    assert ours["gradient_steps"] == 1000 // 4 - 199 // 4 and theirs["gradient_steps"] > 0
    assert report["timed_from_step"] == 450
    assert ours["learning_steps_per_s"] > 0 and theirs["learning_steps_per_s"] > 0
    assert ours["bytes_per_transition"] < 7200 < 56000 < theirs["bytes_per_transition"]
