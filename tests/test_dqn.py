"""DQN: the training signal, the evaluation protocol, a tiny Atari run through the CLI, CartPole solved (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rl.envs import EnvConfig, TrainingSignal, atari_game
from rl.evaluate import EvalConfig, evaluate_policy, human_normalized
from shared.run import latest_checkpoint, load_checkpoint
from shared.tracking import read_metrics

from conftest import CONFIGS, only_run_dir, run_cli
from wandb_records import offline_run


def test_training_signal_clips_rewards_counts_life_loss_and_keeps_true_scores():
    signal = TrainingSignal(EnvConfig(clip_rewards=True, terminal_on_life_loss=True), num_envs=2)
    signal.reset({"lives": np.array([3, 1])})
    no = np.array([False, False])
    r, term, auto = signal.step([4.0, -2.0], no, no, {"lives": np.array([3, 1])})
    assert r.tolist() == [1.0, -1.0] and term.tolist() == [False, False] and auto.tolist() == [False, False]
    r, term, auto = signal.step([0.0, 1.0], no, no, {"lives": np.array([2, 1])})  # env 0 loses a life
    assert term.tolist() == [True, False]
    r, term, auto = signal.step([7.0, 0.0], no, np.array([False, True]), {"lives": np.array([2, 1])})  # env 1 truncated
    assert term.tolist() == [False, False]
    assert signal.pop_finished() == [(1, -1.0, 3)]  # unclipped: -2 + 1 + 0
    r, term, auto = signal.step([0.0, 5.0], no, no, {"lives": np.array([2, 3])})  # env 1's autoreset step
    assert auto.tolist() == [False, True] and term.tolist() == [False, False]  # new lives are no life loss
    r, term, auto = signal.step([0.0, 1.0], np.array([True, False]), no, {"lives": np.array([2, 3])})
    assert signal.pop_finished() == [(0, 11.0, 5)]  # 4 + 0 + 7 + 0 + 0 over 5 steps, life loss did not end it


def test_human_normalized_score_uses_the_nature_table():
    assert human_normalized("ALE/Pong-v5", 18.9) == pytest.approx(100 * (18.9 + 20.7) / (9.3 + 20.7))
    assert human_normalized("ALE/Breakout-v5", 1.7) == 0.0
    assert human_normalized("CartPole-v1", 100.0) is None
    assert atari_game("ALE/SpaceInvaders-v5") == "space_invaders" and atari_game("ALE/BeamRider-v5") == "beam_rider"


def test_evaluation_plays_a_fixed_quota_per_env():
    calls = []

    def act(obs, epsilon):
        calls.append(epsilon)
        return np.zeros(len(obs), dtype=np.int64)  # always push left: short episodes

    result = evaluate_policy(act, EnvConfig(id="CartPole-v1"), EvalConfig(episodes=7, num_envs=3, epsilon=0.05, video=False), seed=0)
    assert result["eval/episodes"] == 7 and set(calls) == {0.05}
    assert 8 <= result["eval/return"] <= 12 and result["eval/episode_length"] == result["eval/return"]
    assert "eval/hns" not in result


def test_tiny_pong_run_through_the_cli_writes_metrics_video_and_checkpoint(tmp_path):
    result = run_cli(
        "train", str(CONFIGS / "dqn" / "pong.yaml"),
        "total_steps=600", "env.num_envs=2", "agent.learning_starts=200", "agent.buffer_size=2000",
        "agent.target_update=100", "eval.every=0", "eval.episodes=2", "eval.num_envs=2", "eval.max_episode_frames=400",
        "tracking.log_every=200", "checkpoint.every=300",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "runs")
    records = read_metrics(run / "metrics.jsonl")
    logged = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in logged] == [200, 400, 600]
    assert logged[-1]["train/updates"] == 600 // 4 - 199 // 4  # one gradient step per 4 agent steps from step 200
    summary = records[-1]["summary"]
    assert summary["eval/episodes"] == 2 and summary["train/steps"] == 600
    assert summary["eval/hns"] == pytest.approx(100 * (summary["eval/return"] + 20.7) / 30.0)
    assert summary["replay/bytes_per_transition"] <= 7200
    assert list((run / "media").glob("eval-*.gif"))
    assert any(h.get("video/_type") == "video-file" for h in offline_run(run)["history"])  # the stable W&B media key
    checkpoint = load_checkpoint(latest_checkpoint(run))
    assert checkpoint["step"] == 600 and set(checkpoint["state"]) == {"q", "target", "optimizer", "explorer", "accel"}
    assert json.loads((run / "meta.json").read_text())["algo"] == "dqn"
    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads(evaluated.stdout)
    assert metrics["step"] == 600 and metrics["eval/episodes"] == 2 and -21 <= metrics["eval/return"] <= 21


@pytest.mark.slow
def test_dqn_solves_cartpole(tmp_path):
    result = run_cli("train", str(CONFIGS / "dqn" / "cartpole.yaml"), "tracking.wandb=disabled", cwd=tmp_path, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_metrics(only_run_dir(tmp_path / "runs") / "metrics.jsonl")[-1]["summary"]
    assert summary["eval/episodes"] == 100 and summary["eval/return"] >= 195


def test_sigterm_and_resume_carry_the_replay_in_the_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [
        "train", str(CONFIGS / "dqn" / "cartpole.yaml"), "total_steps=30000", "agent.learning_starts=500",
        "agent.replay_in_checkpoint=true", "eval.every=0", "eval.episodes=2", "eval.num_envs=2",
        "tracking.log_every=500", "checkpoint.every=100000", "tracking.wandb=disabled",
    ]
    env = os.environ | {"WANDB_MODE": "disabled"}
    process = subprocess.Popen([sys.executable, "-m", "shared.cli", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, run = time.monotonic() + 120, None
    while time.monotonic() < deadline and run is None:
        found = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if found and any(r.get("step", 0) >= 2000 for r in read_metrics(found[0])):
            run = found[0].parent
        time.sleep(0.05)
    assert run is not None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    stopped = load_checkpoint(latest_checkpoint(run))
    assert 2000 <= stopped["step"] < 30000 and "replay" in stopped["state"]
    replay = stopped["state"]["replay"]  # one env, not yet wrapped: every agent step is a transition or an autoreset
    assert replay["has_transition"].sum().item() + replay["episode_start"].sum().item() - 1 == stopped["step"]

    resumed = run_cli("resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in records if "train/epsilon" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 30000  # no step logged twice across the resume
    assert records[-1]["summary"]["train/steps"] == 30000


def test_tiny_breakout_ram_run_reads_the_128_bytes(tmp_path):
    result = run_cli(
        "train", str(CONFIGS / "dqn" / "breakout_ram.yaml"),
        "total_steps=400", "env.num_envs=2", "agent.learning_starts=200", "agent.buffer_size=1000",
        "eval.every=0", "eval.episodes=2", "eval.num_envs=2", "eval.max_episode_frames=400",
        "tracking.log_every=200", "checkpoint.every=400", "tracking.wandb=disabled",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "runs")
    summary = read_metrics(run / "metrics.jsonl")[-1]["summary"]
    assert summary["train/steps"] == 400 and summary["eval/episodes"] == 2
    assert summary["replay/bytes_per_transition"] < 200  # 128 bytes of RAM, stored once, plus action, reward, flags
    q = load_checkpoint(latest_checkpoint(run))["state"]["q"]
    assert q["mlp.trunk.0.weight"].shape == (256, 128)
