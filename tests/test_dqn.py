"""DQN: the TD loss by hand, each of its switches acting in a short run, the training signal, the evaluation
protocol, a tiny Atari run through the CLI, CartPole solved (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import CONFIGS, only_run_dir, run_cli
from wandb_records import offline_run

from rl.dqn import DQNAgentConfig, td_loss
from rl.envs import EnvConfig, TrainingSignal, atari_game
from rl.evaluate import EvalConfig, evaluate_policy, human_normalized
from rl.replay import FrameReplay, ReplayBatch
from shared.cli import main
from shared.media import read_video, video_format
from shared.run import latest_checkpoint, load_checkpoint
from shared.tracking import read_metrics

# ---- the TD loss by hand


def table_q(rows: list[list[float]]) -> nn.Module:
    """A Q-network that returns rows[s] for the one-hot observation of state s: Q = one_hot(s) @ rows."""
    q = nn.Linear(len(rows), len(rows[0]), bias=False)
    with torch.no_grad():
        q.weight.copy_(torch.tensor(rows).T)
    return q


def one_hot(states: list[int], size: int = 4) -> np.ndarray:
    """(B,) state ids -> (B, 1, size) float32: a replay batch of vector observations with stack 1."""
    return np.eye(size, dtype=np.float32)[states][:, None]


def flat(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).flatten(1)


#                 a0    a1
ONLINE = [
    [1.0, 2.0],  # s0
    [0.0, -1.0],  # s1
    [3.0, 1.0],  # s2: the online network prefers a0
    [0.0, 4.0],
]  # s3: the online network prefers a1
TARGET = [
    [0.0, 0.0],
    [0.0, 0.0],
    [3.0, 5.0],  # s2: the target network prefers a1
    [6.0, 1.0],
]  # s3: the target network prefers a0
# Four transitions, gamma 0.5 (every number below is exact in float32):
#   0: s0, a1, r 1, one step to s2:                       discount 0.5
#   1: s1, a0, three steps of rewards 1, 2, 3 to s3:      return 1 + 0.5 * 2 + 0.25 * 3 = 2.75, discount 0.5^3 = 0.125
#   2: s0, a0, r -1, terminated (next s3 is not read):    discount 0
#   3: s1, a1, r 0.5, truncated at s2: it bootstraps:     discount 0.5
BATCH = ReplayBatch(
    obs=one_hot([0, 1, 0, 1]),
    actions=np.array([1, 0, 0, 1]),
    returns=np.array([1.0, 2.75, -1.0, 0.5], dtype=np.float32),
    next_obs=one_hot([2, 3, 3, 2]),
    discounts=np.array([0.5, 0.125, 0.0, 0.5], dtype=np.float32),
    indices=np.arange(4),
    weights=np.ones(4, dtype=np.float32),
)
Q_TAKEN = [2.0, 0.0, 1.0, -1.0]  # ONLINE[s][a]: s0 a1, s1 a0, s0 a0, s1 a1


def loss_of(batch: ReplayBatch, **agent) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, nn.Module, nn.Module]:
    q, target = table_q(ONLINE), table_q(TARGET)  # the target is not frozen here: td_loss itself stops its gradient
    loss, td, q_taken = td_loss(q, target, batch, flat, DQNAgentConfig(gamma=0.5, **agent), torch.device("cpu"))
    return loss, td, q_taken, q, target


def test_td_loss_plain_targets_by_hand():
    # max_a' TARGET[s']: s2 -> 5, s3 -> 6. Targets: 1 + 0.5 * 5 = 3.5; 2.75 + 0.125 * 6 = 3.5; -1 (terminal);
    # 0.5 + 0.5 * 5 = 3. TD = target - Q_TAKEN: 1.5, 3.5, -2, 4.
    loss, td, q_taken, q, target = loss_of(BATCH)
    assert q_taken.tolist() == Q_TAKEN
    assert td.tolist() == [1.5, 3.5, -2.0, 4.0]
    # Huber with delta 1: every |td| >= 1, so |td| - 0.5: 1, 3, 1.5, 3.5; mean 9 / 4
    assert loss.item() == 2.25
    # Semi-gradient: d loss / d Q_taken = -clip(td, -1, 1) / 4 = -0.25, -0.25, +0.25, -0.25 at (a, s) =
    # (1, 0), (0, 1), (0, 0), (1, 1); the targets are constants: nothing reaches the target network.
    loss.backward()
    assert q.weight.grad.tolist() == [[0.25, -0.25, 0.0, 0.0], [-0.25, -0.25, 0.0, 0.0]]
    assert target.weight.grad is None


def test_td_loss_double_targets_by_hand():
    # The online network picks a' (s2 -> a0, s3 -> a1), the target network values it (s2 a0 -> 3, s3 a1 -> 1).
    # Targets: 1 + 0.5 * 3 = 2.5; 2.75 + 0.125 * 1 = 2.875; -1; 0.5 + 0.5 * 3 = 2. TD: 0.5, 2.875, -2, 3.
    loss, td, _, _, _ = loss_of(BATCH, double=True)
    assert td.tolist() == [0.5, 2.875, -2.0, 3.0]
    # Huber: 0.5 * 0.5^2 = 0.125 (|td| < 1), 2.375, 1.5, 2.5; mean 6.5 / 4
    assert loss.item() == 1.625


def test_td_loss_squared_by_hand():
    loss, _, _, _, _ = loss_of(BATCH, loss="mse")
    assert loss.item() == (1.5**2 + 3.5**2 + 2**2 + 4**2) / 4 == 8.625  # (2.25 + 12.25 + 4 + 16) / 4
    loss, _, _, _, _ = loss_of(BATCH, loss="mse", double=True)
    assert loss.item() == (0.5**2 + 2.875**2 + 2**2 + 3**2) / 4 == 5.37890625  # (0.25 + 8.265625 + 4 + 9) / 4


def test_td_loss_weights_each_sample_by_its_importance_weight():
    weighted = BATCH._replace(weights=np.array([1.0, 0.5, 0.25, 1.0], dtype=np.float32))
    loss, td, _, q, _ = loss_of(weighted)
    assert td.tolist() == [1.5, 3.5, -2.0, 4.0]  # the weights scale the loss, never the TD errors (priorities)
    assert loss.item() == (1.0 * 1 + 0.5 * 3 + 0.25 * 1.5 + 1.0 * 3.5) / 4 == 1.59375
    loss.backward()  # d loss / d Q_taken = -w clip(td) / 4 = -0.25, -0.125, +0.0625, -0.25
    assert q.weight.grad.tolist() == [[0.0625, -0.125, 0.0, 0.0], [-0.25, -0.25, 0.0, 0.0]]


def test_td_loss_on_a_replay_of_hand_written_episodes():
    """The replay's 3-step windows, cut by a termination (no bootstrap) and a truncation (bootstrap), into the loss."""
    replay = FrameReplay(16, 1, frame_shape=(8,), stack=1, n_step=3, gamma=0.5, frame_dtype=np.float32, seed=0)
    state = np.eye(8, dtype=np.float32)  # observation of state s: one_hot(s)
    replay.reset(state[[0]])
    # (reward, terminated, truncated, next state, autoreset): states 0 -> 4 end by termination, 5 -> 7 by truncation
    steps = [
        (1, 0, 0, 1, 0),
        (2, 0, 0, 2, 0),
        (3, 0, 0, 3, 0),
        (4, 1, 0, 4, 0),  # the last step terminates
        (0, 0, 0, 5, 1),  # the autoreset step: state 5 opens the next episode
        (5, 0, 0, 6, 0),
        (6, 0, 1, 7, 0),
    ]  # the last step is truncated
    for reward, terminated, truncated, following, autoreset in steps:
        replay.step([0], [reward], [bool(terminated)], [bool(truncated)], state[[following]], [bool(autoreset)])
    # Target network: max_a' Q(s, a') = s; the online network is 0, so each TD error is its target.
    # slot 0: 1 + 0.5 * 2 + 0.25 * 3 = 2.75, three steps to state 3: + 0.125 * 3   = 3.125
    # slot 1: 2 + 0.5 * 3 + 0.25 * 4 = 4.5, the window ends in the termination       = 4.5
    # slot 2: 3 + 0.5 * 4 = 5, terminated after two steps                             = 5
    # slot 3: 4, terminated                                                            = 4
    # slot 4: the final observation of the first episode: no transition, never sampled
    # slot 5: 5 + 0.5 * 6 = 8, truncated after two steps: + 0.25 * 7 (state 7)        = 9.75
    # slot 6: 6, truncated: + 0.5 * 7                                                  = 9.5
    expected = {0: 3.125, 1: 4.5, 2: 5.0, 3: 4.0, 5: 9.75, 6: 9.5}
    q = nn.Linear(8, 2, bias=False)
    target = nn.Linear(8, 2, bias=False).requires_grad_(False)
    with torch.no_grad():
        q.weight.zero_()
        target.weight.copy_(torch.stack([torch.arange(8.0), torch.zeros(8)]))
    batch = replay.sample(64)
    loss, td, _ = td_loss(q, target, batch, flat, DQNAgentConfig(gamma=0.5, n_step=3), torch.device("cpu"))
    assert set(batch.indices.tolist()) == set(expected)
    assert td.tolist() == [expected[i] for i in batch.indices.tolist()]
    assert loss.item() == pytest.approx(np.mean([expected[i] - 0.5 for i in batch.indices.tolist()]))  # Huber, |td| > 1


# ---- each switch acting in a short CartPole run

# 101 gradient steps at a high learning rate against the initial target network (never copied in 400 steps):
# enough for the online network to move away from it, which is where double and plain targets part.
SHORT_CARTPOLE = [
    "total_steps=400",
    "agent.learning_starts=200",
    "agent.batch_size=32",
    "agent.train_freq=2",
    "optim.lr=0.01",
    "agent.target_update=1000",
    "agent.buffer_size=1000",
    "agent.replay_in_checkpoint=true",
    "eval.every=0",
    "eval.episodes=2",
    "eval.num_envs=2",
    "tracking.log_every=200",
    "checkpoint.every=100000",
    "tracking.wandb=disabled",
]


def short_cartpole(runs_dir, *switches: str) -> dict:
    """Train DQN on CartPole for 400 agent steps (101 gradient steps) in this process -> its final checkpoint."""
    config = str(CONFIGS / "dqn" / "cartpole.yaml")
    assert main(["train", config, *SHORT_CARTPOLE, *switches, f"runs_dir={runs_dir}"]) == 0
    run = only_run_dir(runs_dir)
    checkpoint = load_checkpoint(latest_checkpoint(run))
    assert checkpoint["step"] == 400 and checkpoint["counters"]["updates"] == 101  # steps 200, 202, ..., 400
    return checkpoint | {"metrics": read_metrics(run / "metrics.jsonl")}


@pytest.fixture(scope="module")
def plain_cartpole(tmp_path_factory):
    return short_cartpole(tmp_path_factory.mktemp("plain"))


def test_double_run_learns_differently_from_the_same_start(tmp_path, plain_cartpole):
    double = short_cartpole(tmp_path, "agent.double=true")
    # The first gradient step sees the same data with target = online, where double and plain targets agree...
    first = [[r["train/loss"] for r in run["metrics"] if "train/loss" in r][0] for run in (plain_cartpole, double)]
    assert first[0] == first[1]
    # ...and once the online network has moved away from the target, they do not: the switch reached the loss.
    weights = plain_cartpole["state"]["q"]
    assert not all(torch.equal(weights[name], tensor) for name, tensor in double["state"]["q"].items())


def test_dueling_run_learns_value_and_advantage_heads(tmp_path, plain_cartpole):
    dueling = short_cartpole(tmp_path, "agent.dueling=true")
    assert "value.weight" not in plain_cartpole["state"]["q"]
    q = dueling["state"]["q"]
    assert q["value.weight"].shape == (1, 84) and q["mlp.out.weight"].shape == (2, 84)  # V(s) and A(s, a)
    assert not torch.equal(q["value.weight"], dueling["state"]["target"]["value.weight"])  # V was trained


def test_n_step_run_replays_three_step_returns(tmp_path):
    replay_state = short_cartpole(tmp_path, "agent.n_step=3")["state"]["replay"]
    replay = FrameReplay(1000, 1, frame_shape=(4,), stack=1, n_step=3, gamma=0.99, frame_dtype=np.float32)
    replay.load_state_dict(replay_state)
    batch = replay.sample(256)
    full = batch.discounts == np.float32(0.99**3)  # three more steps of CartPole's reward 1 were summed
    assert full.mean() > 0.5 and set(batch.discounts[~full]) <= {np.float32(0.0), np.float32(0.99), np.float32(0.99**2)}
    assert batch.returns[full] == pytest.approx(1 + 0.99 + 0.99**2)


def test_prioritized_run_moves_priorities_off_their_initial_value(tmp_path):
    replay_state = short_cartpole(tmp_path, "agent.prioritized=true")["state"]["replay"]
    replay = FrameReplay(1000, 1, frame_shape=(4,), stack=1, prioritized=True, alpha=0.6, frame_dtype=np.float32)
    replay.load_state_dict(replay_state)
    # New slots enter at the largest priority seen so far (1 before any update) and every slot sampled for a
    # gradient step is set to (|TD| + eps)^0.6: the importance weights (N P(i))^-beta now differ slot by slot.
    weights = replay.sample(256, beta=1.0).weights
    assert len(set(weights.tolist())) > 50 and weights.max() == 1 and weights.min() < 0.9


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

    result = evaluate_policy(
        act, EnvConfig(id="CartPole-v1"), EvalConfig(episodes=7, num_envs=3, epsilon=0.05, video=False), seed=0
    )
    assert result["eval/episodes"] == 7 and set(calls) == {0.05}
    assert 8 <= result["eval/return"] <= 12 and result["eval/episode_length"] == result["eval/return"]
    assert "eval/hns" not in result


def test_tiny_pong_run_through_the_cli_writes_metrics_video_and_checkpoint(tmp_path):
    result = run_cli(
        "train",
        str(CONFIGS / "dqn" / "pong.yaml"),
        "total_steps=600",
        "env.num_envs=2",
        "agent.learning_starts=200",
        "agent.buffer_size=2000",
        "agent.target_update=100",
        "eval.every=300",
        "eval.episodes=2",
        "eval.num_envs=2",
        "eval.max_episode_frames=400",
        "tracking.log_every=200",
        "checkpoint.every=300",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "runs")
    records = read_metrics(run / "metrics.jsonl")
    logged = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in logged] == [200, 400, 600]
    # one evaluation every 300 steps; the last step's is the final one, not played twice
    assert [r["step"] for r in records if "eval/return" in r] == [300, 600]
    assert logged[-1]["train/updates"] == 600 // 4 - 199 // 4  # one gradient step per 4 agent steps from step 200
    summary = records[-1]["summary"]
    assert summary["eval/episodes"] == 2 and summary["train/steps"] == 600
    assert summary["eval/hns"] == pytest.approx(100 * (summary["eval/return"] + 20.7) / 30.0)
    assert summary["replay/bytes_per_transition"] <= 7200
    videos = sorted((run / "media").glob(f"video-*.{video_format()}"))  # each evaluation's first episode
    assert [v.stem for v in videos] == ["video-000000300", "video-000000600"]
    assert read_video(videos[-1]).shape == (101, 210, 160, 3)  # the colour screen at each step, and the last one
    assert any(h.get("video/_type") == "video-file" for h in offline_run(run)["history"])  # the stable W&B media key
    checkpoint = load_checkpoint(latest_checkpoint(run))
    assert checkpoint["step"] == 600 and set(checkpoint["state"]) == {"q", "target", "optimizer", "explorer", "accel"}
    assert json.loads((run / "meta.json").read_text())["algo"] == "dqn"
    nowhere = run_cli("eval", str(run), "--out", str(tmp_path / "absent" / "eval.json"), cwd=tmp_path)
    assert nowhere.returncode != 0 and "--out" in nowhere.stderr and "existing folder" in nowhere.stderr
    evaluated = run_cli("eval", str(run), "eval.epsilon=0.01", "--out", "eval.json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads(evaluated.stdout)
    assert metrics["step"] == 600 and metrics["eval/episodes"] == 2
    written = json.loads((tmp_path / "eval.json").read_text())  # --out: the printed metrics and what made them
    assert written["command"] == f"pixlab eval {run} eval.epsilon=0.01"
    assert written["checkpoint"] == metrics["checkpoint"]
    assert written["metrics"] == {k: v for k, v in metrics.items() if k != "checkpoint"}
    assert written["machine"]["precision"] in ("fp32", "bf16") and written["machine"]["threads"] >= 1
    assert set(written) == {"command", "checkpoint", "metrics", "measured", "git", "machine"}
    assert metrics["eval/episode_length"] == 100  # every episode cut at eval.max_episode_frames: 400 frames = 100 steps
    # Two episodes: their scores are mean -+ std. Pong pays whole points, unclipped; in 400 frames the opponent
    # scores at most 3 and an untrained agent none.
    mean, std = metrics["eval/return"], metrics["eval/return_std"]
    assert all(score == round(score) and -3 <= score <= 0 for score in (mean - std, mean + std)), (mean, std)
    assert metrics["eval/hns"] == pytest.approx(100 * (mean + 20.7) / 30.0)


@pytest.mark.slow
def test_dqn_solves_cartpole(tmp_path):
    result = run_cli(
        "train", str(CONFIGS / "dqn" / "cartpole.yaml"), "tracking.wandb=disabled", cwd=tmp_path, timeout=3600
    )
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
        "train",
        str(CONFIGS / "dqn" / "cartpole.yaml"),
        "total_steps=6000",
        "agent.learning_starts=500",
        "agent.replay_in_checkpoint=true",
        "eval.every=0",
        "eval.episodes=2",
        "eval.num_envs=2",
        "tracking.log_every=500",
        "checkpoint.every=100000",
        "tracking.wandb=disabled",
    ]
    env = os.environ | {"WANDB_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, run = time.monotonic() + 120, None
    while time.monotonic() < deadline and run is None:
        found = list((tmp_path / "runs").glob("*/metrics.jsonl"))
        if found and any(r.get("step", 0) >= 1000 for r in read_metrics(found[0])):
            run = found[0].parent
        time.sleep(0.05)
    assert run is not None, process.communicate()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-2000:]
    stopped = load_checkpoint(latest_checkpoint(run))
    assert 1000 <= stopped["step"] < 6000 and "replay" in stopped["state"]
    replay = stopped["state"]["replay"]  # one env, not yet wrapped: every agent step is a transition or an autoreset
    assert replay["has_transition"].sum().item() + replay["episode_start"].sum().item() - 1 == stopped["step"]

    resumed = run_cli("resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in records if "train/epsilon" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 6000  # no step logged twice across the resume
    assert records[-1]["summary"]["train/steps"] == 6000


def test_tiny_breakout_ram_run_reads_the_128_bytes(tmp_path):
    result = run_cli(
        "train",
        str(CONFIGS / "dqn" / "breakout_ram.yaml"),
        "total_steps=400",
        "env.num_envs=2",
        "agent.learning_starts=200",
        "agent.buffer_size=1000",
        "eval.every=0",
        "eval.episodes=2",
        "eval.num_envs=2",
        "eval.max_episode_frames=400",
        "tracking.log_every=200",
        "checkpoint.every=400",
        "tracking.wandb=disabled",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = only_run_dir(tmp_path / "runs")
    summary = read_metrics(run / "metrics.jsonl")[-1]["summary"]
    assert summary["train/steps"] == 400 and summary["eval/episodes"] == 2
    assert summary["replay/bytes_per_transition"] < 200  # 128 bytes of RAM, stored once, plus action, reward, flags
    q = load_checkpoint(latest_checkpoint(run))["state"]["q"]
    assert q["mlp.trunk.0.weight"].shape == (256, 128)
