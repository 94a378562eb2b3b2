"""REINFORCE: returns and advantages by hand, the player's episode bookkeeping, the glimpse agent's
log-probabilities, and tiny runs of every policy through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS, only_run_dir, run_cli
from wandb_records import offline_run

from rl.envs import EnvConfig, make_vec_env
from rl.reinforce import (
    Player,
    ReinforceAgentConfig,
    ReinforceConfig,
    advantages,
    build_policy,
    pad_episodes,
    reward_to_go,
)
from shared.errors import ConfigError
from shared.media import read_video, video_format
from shared.models.glimpse import GlimpseAgent, GlimpseConfig
from shared.tracking import read_metrics


def test_reward_to_go_by_hand():
    rewards = np.array([1.0, 0.0, 2.0, 1.0])
    # gamma 0.5: G3 = 1; G2 = 2 (its segment ends there); G1 = 0 + 0.5 * 2 = 1; G0 = 1 + 0.5 * 1 = 1.5
    assert reward_to_go(rewards, np.array([False, False, True, True]), 0.5).tolist() == [1.5, 1.0, 2.0, 1.0]
    # no cut inside: G2 = 2 + 0.5 * 1 = 2.5, G1 = 1.25, G0 = 1.625
    assert reward_to_go(rewards, np.array([False, False, False, True]), 0.5).tolist() == [1.625, 1.25, 2.5, 1.0]


def test_advantages_subtract_the_baseline_then_normalise():
    returns = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    assert advantages(returns, np.array([0.5, 0.5, 0.5]), normalize=False).tolist() == [0.5, 1.5, 2.5]
    assert advantages(returns, 1.0, normalize=False).tolist() == [0.0, 1.0, 2.0]
    # (A - mean) / std with mean 1.5 and std sqrt(2/3)
    assert advantages(returns, 0.5, normalize=True) == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)], abs=1e-6)


class Scripted(torch.nn.Module):
    """A stand-in policy that always plays action 1 and records nothing but a value of 0."""

    recurrent = False

    def initial_memory(self, n, device):
        return None

    def reset_memory(self, memory, keep):
        return None

    def act(self, obs, memory):
        return torch.ones(len(obs), dtype=torch.int64), {"value": torch.zeros(len(obs))}, None


def test_player_hands_back_whole_episodes_with_their_steps():
    cfg = EnvConfig(id="CartPole-v1", num_envs=3)
    env = make_vec_env(cfg)
    player = Player(env, Scripted(), cfg, ReinforceAgentConfig(), None, torch.device("cpu"), seed=0)
    episodes, taken = player.play(5)
    assert len(episodes) >= 5 and taken % 3 == 0
    for ep in episodes:
        # CartPole pays 1 per step survived: the score is the length, every step is recorded once
        assert ep.length == len(ep.actions) == len(ep.rewards) == ep.score
        assert ep.obs.shape == (ep.length, 4) and (ep.actions == 1).all()
        assert ep.cuts.tolist() == [False] * (ep.length - 1) + [True]
        assert ep.extras["value"].shape == (ep.length,)
    # the steps taken cover the finished episodes, the autoreset steps and the unfinished ones
    assert taken >= sum(ep.length for ep in episodes)
    env.close()


class ScriptedPong:
    """One env playing one episode of 8 steps whose rewards are Pong points: -1, +1, -1 (NextStep autoreset)."""

    num_envs = 1
    rewards = [0.0, 0.0, -1.0, 0.0, 1.0, 0.0, 0.0, -1.0]

    def reset(self, seed=None):
        self.t = 0
        return np.zeros((1, 4), dtype=np.float32), {}

    def step(self, actions):
        reward, self.t = self.rewards[self.t], self.t + 1
        return np.zeros((1, 4), dtype=np.float32), np.array([reward]), np.array([self.t == 8]), np.array([False]), {}


@pytest.mark.parametrize("rule", [True, False])
def test_karpathy_return_rule_cuts_at_each_point(rule):
    agent = ReinforceAgentConfig(gamma=0.99, reset_return_on_reward=rule)
    player = Player(
        ScriptedPong(), Scripted(), EnvConfig(id="ALE/Pong-v5", clip_rewards=False), agent, None, torch.device("cpu"), 0
    )
    (episode,), taken = player.play(1)
    assert taken == 8 and episode.rewards.tolist() == ScriptedPong.rewards and episode.score == -1.0
    g = reward_to_go(episode.rewards, episode.cuts, agent.gamma)  # what update() regresses on
    if rule:  # each point ends its return: G = -1 at step 2, +1 at step 4, -1 at step 7, discounted before them
        assert episode.cuts.tolist() == [False, False, True, False, True, False, False, True]
        assert g.tolist() == pytest.approx([-(0.99**2), -0.99, -1, 0.99, 1, -(0.99**2), -0.99, -1])
    else:  # one return over the whole episode: G_4 = 1 - 0.99^3, G_2 = -1 + 0.99 G_3 = -1 + 0.99^2 G_4
        assert episode.cuts.tolist() == [False] * 7 + [True]
        g4 = 1 - 0.99**3
        assert g.tolist() == pytest.approx(
            [
                0.99**2 * (-1 + 0.99**2 * g4),
                0.99 * (-1 + 0.99**2 * g4),
                -1 + 0.99**2 * g4,
                0.99 * g4,
                g4,
                -(0.99**2),
                -0.99,
                -1,
            ]
        )


def test_glimpse_agent_log_prob_is_action_plus_location():
    torch.manual_seed(0)
    agent = GlimpseAgent(
        4,
        3,
        GlimpseConfig(
            patch=6, scales=2, hidden=16, what=8, where=8, glimpse_features=16, core="lstm", location_std=0.2
        ),
    )
    obs = torch.randint(0, 255, (5, 2, 4, 42, 42), dtype=torch.uint8)  # (T, E, C, H, W)
    memory = agent.initial_memory(2, torch.device("cpu"))
    actions, locations, nexts = [], [], []
    for t in range(5):
        a, extras, memory = agent.act(obs[t], memory)
        actions.append(a), locations.append(extras["location"]), nexts.append(extras["next_location"])
        if t:
            assert torch.equal(extras["location"], nexts[t - 1])  # it looks where it chose to look
    assert (locations[0] == 0).all()  # the first glimpse is at the centre
    extras = {"location": torch.stack(locations), "next_location": torch.stack(nexts)}
    log_prob, entropy, value = agent.evaluate(obs, torch.stack(actions), extras, torch.ones(5, 2, dtype=torch.bool))
    assert log_prob.shape == entropy.shape == value.shape == (5, 2)

    # step 0 by hand: one glimpse at the centre from a zero state
    state = agent.core.initial_state(2, torch.device("cpu"))
    h, _ = agent.core(agent.glimpse(obs[0].float() / 255, torch.zeros(2, 2)), state)
    logits = agent.logits(h)
    by_hand = torch.log_softmax(logits, 1).gather(1, actions[0][:, None]).squeeze(1)
    z = (nexts[0] - torch.tanh(agent.locate.mean(h))) / 0.2
    by_hand = by_hand + (-0.5 * z.pow(2) - math.log(0.2) - 0.5 * math.log(2 * math.pi)).sum(1)
    assert torch.allclose(log_prob[0], by_hand, atol=1e-5)


def test_padding_keeps_each_episode_in_its_column():
    from rl.reinforce import Episode

    def episode(n, value):
        return Episode(
            np.full((n, 2), value),
            np.full(n, value, dtype=np.int64),
            {"value": np.full(n, value, dtype=np.float32)},
            np.zeros(n, np.float32),
            np.r_[np.zeros(n - 1, bool), True],
            0.0,
            n,
            0,
        )

    obs, actions, extras, mask = pad_episodes([episode(3, 1), episode(1, 2)], torch.device("cpu"))
    assert obs.shape == (3, 2, 2) and mask.tolist() == [[True, True], [True, False], [True, False]]
    assert actions.tolist() == [[1, 2], [1, 0], [1, 0]] and extras["value"][:, 0].tolist() == [1, 1, 1]


def test_policies_are_chosen_by_observation_shape():
    cfg = ReinforceConfig()
    assert type(build_policy(cfg, (4,), 2)).__name__ == "FeedForwardPolicy"
    assert type(build_policy(cfg, (4, 84, 84), 6).torso).__name__ == "NatureEncoder"
    cfg.policy.kind = "glimpse"
    with pytest.raises(ConfigError, match="frame stacks"):
        build_policy(cfg, (128,), 4)


def test_cartpole_run_through_the_cli_and_eval(tmp_path):
    config = str(CONFIGS / "reinforce" / "cartpole.yaml")
    result = run_cli(
        "train", config, "total_steps=1500", "checkpoint.every=500", "eval.episodes=4", "eval.num_envs=2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    records = read_metrics(run / "metrics.jsonl")
    updates = [r for r in records if "train/policy_loss" in r]
    assert updates and all(r["train/episodes"] >= 8 * (i + 1) for i, r in enumerate(updates))
    assert [r["train/updates"] for r in updates] == list(range(1, len(updates) + 1))
    agent = yaml.safe_load((run / "config.yaml").read_text())["agent"]  # train/loss: the total that was minimised
    parts = [
        r["train/policy_loss"]
        - agent["entropy_coef"] * r["train/entropy"]
        + agent["value_coef"] * r["train/value_loss"]
        for r in updates
    ]
    assert [r["train/loss"] for r in updates] == pytest.approx(parts, rel=1e-4, abs=1e-6)
    summary = records[-1]["summary"]
    assert summary["train/steps"] == updates[-1]["step"] >= 1500
    assert summary["train/return_100"] == pytest.approx(updates[-1]["train/return_100"])
    assert offline_run(run)["summary"]["train/episodes"] == summary["train/episodes"]
    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["eval/episodes"] == 4 and metrics["eval/return"] >= 8  # CartPole lasts at least 8 steps
    more = run_cli("eval", str(run), "eval.episodes=6", cwd=tmp_path)  # how to evaluate, given on the command line
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["eval/episodes"] == 6
    assert "episodes: 4" in (run / "config.yaml").read_text()  # the run's own config is left as it was
    bad = run_cli("eval", str(run), "eval.episode=6", cwd=tmp_path)
    assert bad.returncode == 2 and "eval.episode" in bad.stderr


@pytest.mark.parametrize("config", ["pong_karpathy", "breakout_ram", "breakout_glimpses"])
def test_atari_policies_run_through_the_cli(tmp_path, config):
    result = run_cli(
        "train",
        str(CONFIGS / "reinforce" / f"{config}.yaml"),
        "total_steps=600",
        "env.num_envs=2",
        "agent.batch_episodes=2",
        "env.max_episode_frames=1200",
        "eval.video_max_steps=20",
        "tracking.wandb=disabled",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    records = read_metrics(run / "metrics.jsonl")
    updates = [r for r in records if "train/policy_loss" in r]
    assert updates and all(math.isfinite(r["train/policy_loss"]) for r in updates)
    # episodes are cut at 1,200 frames = 300 agent steps
    assert all(0 < r["train/episode_length"] <= 300 for r in updates)
    assert "train/hns_100" in records[-1]["summary"]
    assert list((run / "checkpoints").iterdir())
    # the final policy's video: 20 agent steps filmed in colour, and the screen after the last
    (video,) = (run / "media").glob(f"video-{records[-1]['summary']['train/steps']:09d}.{video_format()}")
    assert read_video(video).shape == (21, 210, 160, 3)


def test_action_set_outside_the_game_is_refused(tmp_path):
    result = run_cli(
        "train",
        str(CONFIGS / "reinforce" / "pong_karpathy.yaml"),
        "policy.action_set=[2,9]",
        "total_steps=100",
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "policy.action_set" in result.stderr and "0..5" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-written


@pytest.mark.slow
def test_reinforce_solves_cartpole(tmp_path):
    result = run_cli(
        "train", str(CONFIGS / "reinforce" / "cartpole.yaml"), "tracking.wandb=disabled", cwd=tmp_path, timeout=1800
    )
    assert result.returncode == 0, result.stderr
    summary = read_metrics(only_run_dir(tmp_path / "runs") / "metrics.jsonl")[-1]["summary"]
    assert summary["train/return_100"] >= 475
