"""REINFORCE: the Monte-Carlo policy gradient (Williams 1992; CS231n lecture 14), with reward-to-go, a
baseline, advantage normalisation and an entropy bonus.

    pixlab train configs/reinforce/cartpole.yaml
    pixlab train configs/reinforce/pong_karpathy.yaml     Karpathy's "Pong from pixels"
    pixlab train configs/reinforce/breakout_ram.yaml      an MLP on the console's 128 RAM bytes
    pixlab train configs/reinforce/breakout_glimpses.yaml the Recurrent Attention Model playing Atari

Each update: play N environments until `batch_episodes` episodes have ended, then ascend

    sum over steps t of  log pi(a_t | s_t) * A_t  +  entropy_coef * H(pi(. | s_t))

with the reward-to-go G_t = r_t + gamma r_{t+1} + ... (to the end of the return's segment: the episode,
a lost life when `env.terminal_on_life_loss`, or with `agent.reset_return_on_reward` each point scored, as
in Karpathy's Pong code), and A_t = G_t - b_t. The baseline b_t is a learned value V(s_t) (regressed on
G_t, recorded when the step was played), a running mean of the returns, or none; A is then normalised
over the batch if asked (Karpathy normalises G with no baseline). Episodes still running at an update are
kept and finish in the next batch: their first steps were played by the previous policy, a small bias
we accept rather than throwing away steps (or letting finished environments idle).

Policies: an MLP for vectors (CartPole, Atari RAM, Karpathy's difference frames), the Nature CNN with a
linear action head for stacked frames, and the glimpse agent of shared/models/glimpse.py (recurrent: it is
unrolled over each whole episode in the update). Step counts are agent steps summed over environments.
Acting and the update run through the shared Accelerator (`accel:`); the log-probabilities, the value and
the loss are taken in fp32 under any precision.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from rl.envs import EnvConfig, TrainingSignal, check_env, is_atari, make_vec_env
from rl.evaluate import EpisodeQuota, EpisodeVideo, VideoConfig, check_video, human_normalized
from shared.config import RunConfig, register, require, require_positive
from shared.errors import ConfigError
from shared.models.glimpse import GlimpseAgent, GlimpseConfig
from shared.models.mlp import MLP
from shared.models.nature_cnn import NatureEncoder
from shared.run import Run
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.optim import OptimConfig, make_optimizer


@dataclass
class PolicyConfig:
    kind: Literal["auto", "mlp", "nature_cnn", "glimpse"] = "auto"  # auto: nature_cnn for frame stacks, else mlp
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # mlp
    action_set: Optional[list[int]] = None  # play only these env actions (Karpathy's Pong: [2, 3], up and down)
    glimpse: GlimpseConfig = field(
        default_factory=lambda: GlimpseConfig(patch=12, scales=3, core="lstm", location_std=0.1)
    )


@dataclass
class ReinforceAgentConfig:
    gamma: float = 0.99
    batch_episodes: int = 10  # episodes per update
    baseline: Literal["value", "mean", "none"] = "value"
    normalize_advantages: bool = True
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    mean_decay: float = 0.9  # baseline=mean: b <- decay b + (1 - decay) mean(G) after each update
    reset_return_on_reward: bool = False  # Karpathy's Pong rule: each point ends the return's sum
    max_grad_norm: Optional[float] = None
    chunk_steps: int = 4096  # feed-forward policies: steps per forward/backward chunk of an update (memory)


@dataclass
class PlayConfig(VideoConfig):
    episodes: int = 30  # `pixlab eval`: episodes played with the stochastic policy
    num_envs: int = 8
    max_episode_frames: int = 108_000  # also the cap of the video's episode, played at the end of training


@dataclass
class ReinforceConfig(RunConfig):
    algo: str = "reinforce"
    total_steps: int = 1_000_000
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="CartPole-v1", num_envs=8))
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    agent: ReinforceAgentConfig = field(default_factory=ReinforceAgentConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3))
    eval: PlayConfig = field(default_factory=PlayConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        a = self.agent
        require_positive(self, "total_steps", "env.num_envs")
        require(0 < a.gamma <= 1, "agent.gamma", "must be in (0, 1]", a.gamma)
        require(a.batch_episodes > 0, "agent.batch_episodes", "must be > 0", a.batch_episodes)
        require(a.chunk_steps > 0, "agent.chunk_steps", "must be > 0", a.chunk_steps)
        require(0 <= a.mean_decay < 1, "agent.mean_decay", "must be in [0, 1)", a.mean_decay)
        require(
            self.policy.action_set is None or len(self.policy.action_set) > 1,
            "policy.action_set",
            "needs at least 2 actions",
            self.policy.action_set,
        )
        require(self.eval.episodes > 0, "eval.episodes", "must be > 0", self.eval.episodes)
        check_video(self.eval, self.env)

    def check(self) -> None:
        check_env(self.env)


# ----------------------------------------------------------------------------------------------- policies
class FeedForwardPolicy(nn.Module):
    """obs (B, ...) -> (action logits (B, A), value (B,)).

    The value has a torso of its own: regressing unnormalised returns (hundreds on CartPole) through a
    shared torso swamps the policy's gradient, and the baseline must not steer the policy's features.
    """

    recurrent = False

    def __init__(self, make_torso, features: int, num_actions: int) -> None:
        super().__init__()
        self.torso = make_torso()
        self.logits = nn.Linear(features, num_actions)
        self.value = nn.Sequential(make_torso(), nn.Linear(features, 1))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In fp32 under autocast too: the log-probabilities, and the value that is stored as the baseline.
        return self.logits(self.torso(obs)).float(), self.value(obs).squeeze(-1).float()

    def initial_memory(self, n: int, device: torch.device) -> None:
        return None

    def reset_memory(self, memory: None, keep: torch.Tensor) -> None:
        return None

    def act(self, obs: torch.Tensor, memory: None) -> tuple[torch.Tensor, dict, None]:
        """-> (actions (B,), what to store with the step {'value': (B,)}, memory)."""
        logits, value = self(obs)
        return torch.distributions.Categorical(logits=logits).sample(), {"value": value}, None

    def evaluate(
        self, obs: torch.Tensor, actions: torch.Tensor, extras: dict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps (M, ...) -> (log pi(a), entropy, value), each (M,)."""
        logits, value = self(obs)
        dist = torch.distributions.Categorical(logits=logits)
        return dist.log_prob(actions), dist.entropy(), value


class MLPTorso(nn.Module):
    def __init__(self, in_features: int, hidden: list[int]) -> None:
        super().__init__()
        self.mlp = MLP(in_features, 1, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp.features(x.flatten(1))


def build_policy(cfg: ReinforceConfig, obs_shape: tuple, num_actions: int) -> nn.Module:
    kind = cfg.policy.kind
    if kind == "auto":
        kind = "nature_cnn" if len(obs_shape) == 3 else "mlp"
    if kind in ("nature_cnn", "glimpse") and len(obs_shape) != 3:
        raise ConfigError(
            f"policy.kind={kind!r} reads frame stacks (C, H, W), but {cfg.env.id} gives observations of shape {obs_shape}"
        )
    if kind == "mlp":
        return FeedForwardPolicy(
            lambda: MLPTorso(int(np.prod(obs_shape)), cfg.policy.hidden), cfg.policy.hidden[-1], num_actions
        )
    if kind == "nature_cnn":
        return FeedForwardPolicy(lambda: NatureEncoder(obs_shape[0]), 512, num_actions)
    return GlimpseAgent(obs_shape[0], num_actions, cfg.policy.glimpse)


# ----------------------------------------------------------------------------------------------- returns
def reward_to_go(rewards: np.ndarray, cuts: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = r_t + gamma G_{t+1}, with G_t = r_t where cuts[t] (the return's segment ends after step t).

    rewards (T,) float, cuts (T,) bool -> (T,) float32.
    """
    returns = np.zeros(len(rewards), dtype=np.float32)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        if cuts[t]:
            running = 0.0
        running = float(rewards[t]) + gamma * running
        returns[t] = running
    return returns


def advantages(returns: np.ndarray, baseline: np.ndarray | float, normalize: bool) -> np.ndarray:
    """A = G - b, then (A - mean) / (std + 1e-8) over the batch if `normalize`; (M,) float32."""
    adv = (returns - baseline).astype(np.float32)
    if normalize and len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


# ----------------------------------------------------------------------------------------------- playing
class Episode(NamedTuple):
    obs: np.ndarray  # (T, *obs_shape)
    actions: np.ndarray  # (T,) indices into the policy's actions
    extras: dict  # name -> (T, ...) arrays the policy stored with each step (value; the glimpse locations)
    rewards: np.ndarray  # (T,) what the learner sees (clipped if configured)
    cuts: np.ndarray  # (T,) bool: the return's segment ends after this step
    score: float  # the unclipped game score
    length: int
    env: int  # which of the vector env's environments played it


class Player:
    """Plays a policy in a vector env, step by step, and hands back the episodes that end.

    It keeps the env, its observations and the policy's memory between calls, so an episode may span two
    calls (two updates). With `record=False` it only counts scores (evaluation). The policy acts under
    `accel`'s precision and layout (fp32 without one). With a `film`, env 0's first episode is filmed, with
    the glimpse agent's glimpses drawn.
    """

    def __init__(
        self,
        env,
        policy: nn.Module,
        env_cfg: EnvConfig,
        agent: ReinforceAgentConfig,
        action_set,
        device,
        seed: int,
        record: bool = True,
        accel: Optional[Accelerator] = None,
        film: Optional[EpisodeVideo] = None,
    ):
        self.env, self.policy, self.device, self.record, self.film = env, policy, device, record, film
        self.accel = accel if accel is not None else Accelerator(AccelConfig(precision="fp32"), device)
        self.reset_on_reward = agent.reset_return_on_reward
        self.action_set = None if action_set is None else np.asarray(action_set)
        self.signal = TrainingSignal(env_cfg, env.num_envs)
        self.obs, info = env.reset(seed=seed)
        self.signal.reset(info)
        if film is not None:
            film.reset(self.obs, seed)
        self.memory = policy.initial_memory(env.num_envs, device)
        self.steps: list[list] = [[] for _ in range(env.num_envs)]

    def play(self, episodes: int) -> tuple[list[Episode], int]:
        """Step until at least `episodes` episodes have ended -> (those episodes, agent steps taken)."""
        done: list[Episode] = []
        taken = 0
        while len(done) < episodes:
            with torch.inference_mode(), self.accel.autocast():
                obs = self.accel.to_input(torch.as_tensor(self.obs, device=self.device))
                actions, extras, self.memory = self.policy.act(obs, self.memory)
            actions = actions.cpu().numpy()
            extras = {k: v.cpu().numpy() for k, v in extras.items()}
            env_actions = actions if self.action_set is None else self.action_set[actions]
            next_obs, rewards, terminated, truncated, info = self.env.step(env_actions)
            learner_rewards, terminals, autoreset = self.signal.step(rewards, terminated, truncated, info)
            taken += self.env.num_envs
            if self.film is not None:
                self.film.step(
                    env_actions, next_obs, rewards, terminated | truncated, extras.get("location", [None])[0]
                )
            for e in np.flatnonzero(~autoreset):  # an autoreset step only starts the next episode
                cut = terminals[e] or (self.reset_on_reward and learner_rewards[e] != 0)
                if self.record:
                    self.steps[e].append(
                        (self.obs[e].copy(), actions[e], {k: v[e] for k, v in extras.items()}, learner_rewards[e], cut)
                    )
            for e, score, length in self.signal.pop_finished():
                done.append(self._episode(e, score, length))
            self.obs = next_obs
            if autoreset.any():  # those envs now show a new episode's first frame: the policy forgets
                self.memory = self.policy.reset_memory(self.memory, torch.as_tensor(~autoreset, device=self.device))
        return done, taken

    def _episode(self, e: int, score: float, length: int) -> Episode:
        steps, self.steps[e] = self.steps[e], []
        if not self.record:
            return Episode(np.empty(0), np.empty(0), {}, np.empty(0), np.empty(0), score, length, e)
        obs, actions, extras, rewards, cuts = zip(*steps)
        cuts = np.array(cuts, dtype=bool)
        cuts[-1] = True  # the episode's end (a truncation too: REINFORCE has nothing to bootstrap from)
        extras = {k: np.stack([x[k] for x in extras]) for k in extras[0]}
        return Episode(
            np.stack(obs),
            np.array(actions, dtype=np.int64),
            extras,
            np.array(rewards, dtype=np.float32),
            cuts,
            score,
            length,
            e,
        )


# ----------------------------------------------------------------------------------------------- learning
def update(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    accel: Accelerator,
    episodes: list[Episode],
    cfg: ReinforceConfig,
    mean_baseline: float,
    device,
) -> tuple[dict, float]:
    """One policy-gradient step on whole episodes -> (metrics, the new running-mean baseline)."""
    a = cfg.agent
    returns = np.concatenate([reward_to_go(ep.rewards, ep.cuts, a.gamma) for ep in episodes])
    if a.baseline == "value":
        baseline = np.concatenate([ep.extras["value"] for ep in episodes])
    else:
        baseline = mean_baseline if a.baseline == "mean" else 0.0
    adv = advantages(returns, baseline, a.normalize_advantages)
    total = len(returns)
    optimizer.zero_grad(set_to_none=True)
    sums = {"loss": 0.0, "policy_loss": 0.0, "entropy": 0.0, "value_loss": 0.0}  # loss: the total minimised

    def backward(log_prob, entropy, value, adv_part, ret_part) -> None:
        policy_loss = -(adv_part * log_prob).sum()
        value_loss = (value - ret_part).pow(2).sum() if a.baseline == "value" else torch.zeros((), device=device)
        loss = (policy_loss - a.entropy_coef * entropy.sum() + a.value_coef * value_loss) / total
        accel.backward(loss)
        sums["loss"] += loss.item()
        sums["policy_loss"] += policy_loss.item() / total
        sums["entropy"] += entropy.sum().item() / total
        sums["value_loss"] += value_loss.item() / total

    if policy.recurrent:  # unrolled over each whole episode, episodes side by side (T, E), padded
        obs, actions, extras, mask = pad_episodes(episodes, device)
        with accel.autocast():
            log_prob, entropy, value = policy.evaluate(obs, actions, extras, mask)
        index = mask.T.nonzero(as_tuple=True)  # episode-major, the order of `returns`
        backward(
            log_prob.T[index],
            entropy.T[index],
            value.T[index],
            torch.from_numpy(adv).to(device),
            torch.from_numpy(returns).to(device),
        )
    else:  # steps are independent: chunks bound the memory, and their gradients add up exactly
        obs = np.concatenate([ep.obs for ep in episodes])
        actions = np.concatenate([ep.actions for ep in episodes])
        for start in range(0, total, a.chunk_steps):
            part = slice(start, start + a.chunk_steps)
            with accel.autocast():
                chunk = accel.to_input(torch.as_tensor(obs[part], device=device))
                log_prob, entropy, value = policy.evaluate(chunk, torch.as_tensor(actions[part], device=device), {})
            backward(
                log_prob,
                entropy,
                value,
                torch.from_numpy(adv[part]).to(device),
                torch.from_numpy(returns[part]).to(device),
            )
    accel.unscale(optimizer)  # the true gradients, for their norm and the clipping
    grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), a.max_grad_norm or math.inf)
    accel.step(optimizer)
    new_mean = a.mean_decay * mean_baseline + (1 - a.mean_decay) * float(returns.mean())
    metrics = {f"train/{k}": v for k, v in sums.items()} | {
        "train/grad_norm": grad_norm.item(),
        "train/return_to_go": float(returns.mean()),
    }
    return metrics, new_mean


def pad_episodes(episodes: list[Episode], device) -> tuple[torch.Tensor, torch.Tensor, dict, torch.Tensor]:
    """Episodes -> time-major padded tensors: obs (T, E, ...), actions (T, E), extras (T, E, ...), mask (T, E)."""
    longest = max(len(ep.actions) for ep in episodes)

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        out = np.zeros((longest, len(arrays), *arrays[0].shape[1:]), dtype=arrays[0].dtype)
        for i, x in enumerate(arrays):
            out[: len(x), i] = x
        return torch.from_numpy(out).to(device)

    mask = stack([np.ones(len(ep.actions), dtype=bool) for ep in episodes])
    extras = {k: stack([ep.extras[k] for ep in episodes]) for k in episodes[0].extras}
    return stack([ep.obs for ep in episodes]), stack([ep.actions for ep in episodes]), extras, mask


def make_env(cfg: ReinforceConfig):
    env = make_vec_env(cfg.env)
    n = int(env.single_action_space.n)
    action_set = cfg.policy.action_set
    if action_set is not None and not all(0 <= x < n for x in action_set):
        env.close()
        raise ConfigError(f"policy.action_set {action_set} names actions outside {cfg.env.id}'s 0..{n - 1}")
    return env, (n if action_set is None else len(action_set))


def train(cfg: ReinforceConfig, run: Run) -> None:
    env, num_actions = make_env(cfg)
    accel = Accelerator(cfg.accel, run.device)
    # Compiled in place: acting and the update call the policy's own act and evaluate, which call self(...).
    policy = accel.prepare(build_policy(cfg, env.single_observation_space.shape, num_actions), in_place=True)
    optimizer = make_optimizer(policy.parameters(), cfg.optim)
    state = run.restore({"policy": policy, "optimizer": optimizer}) or {
        "step": 0,
        "updates": 0,
        "episodes": 0,
        "mean_baseline": 0.0,
        "recent": [],
        "resumes": 0,
    }
    # The Accelerator's state (the fp16 loss scale) rides in the counters: checkpoints from before REINFORCE
    # had an Accelerator hold none, and must still resume.
    accel.load_state_dict(state.get("accel"))
    step, updates, episodes_seen = state["step"], state["updates"], state["episodes"]
    mean_baseline, recent = state["mean_baseline"], deque(state["recent"], maxlen=100)
    resumes = state["resumes"] + (1 if step else 0)
    player = Player(
        env, policy, cfg.env, cfg.agent, cfg.policy.action_set, run.device, seed=cfg.seed + 1000 * resumes, accel=accel
    )

    def save() -> None:
        counters = {
            "updates": updates,
            "episodes": episodes_seen,
            "mean_baseline": mean_baseline,
            "recent": list(recent),
            "resumes": resumes,
        }
        run.save(step, {"policy": policy, "optimizer": optimizer}, counters | {"accel": accel.state_dict()})

    progress = tqdm(total=cfg.total_steps, initial=step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True)
    next_checkpoint = (step // cfg.checkpoint.every + 1) * cfg.checkpoint.every
    clock = time.perf_counter()
    while step < cfg.total_steps and not run.should_stop:
        episodes, taken = player.play(cfg.agent.batch_episodes)
        metrics, mean_baseline = update(policy, optimizer, accel, episodes, cfg, mean_baseline, run.device)
        step, updates, episodes_seen = step + taken, updates + 1, episodes_seen + len(episodes)
        progress.update(taken)
        scores = [ep.score for ep in episodes]
        recent.extend(scores)
        now = time.perf_counter()
        metrics |= {
            "train/episode_return": float(np.mean(scores)),
            "train/return_100": float(np.mean(recent)),  # the mean over the last 100 episodes
            "train/episode_length": float(np.mean([ep.length for ep in episodes])),
            "train/episodes": episodes_seen,
            "train/updates": updates,
            "train/steps_per_s": taken / max(now - clock, 1e-9),
        }
        clock = now
        run.check_finite("train/loss", metrics["train/loss"], step)
        run.log(metrics, step)
        progress.set_postfix(ret100=f"{metrics['train/return_100']:.1f}")
        if step >= next_checkpoint or run.should_stop:
            save()
            next_checkpoint = (step // cfg.checkpoint.every + 1) * cfg.checkpoint.every
    progress.close()
    env.close()
    if run.should_stop:
        return
    save()
    if cfg.eval.video and is_atari(cfg.env.id):
        run.log_video(
            "video", record_video(cfg, policy, accel, run.device, run.dir / "media" / f"video-{step:09d}"), step
        )
    summary = {"train/return_100": float(np.mean(recent)), "train/episodes": episodes_seen, "train/steps": step}
    hns = human_normalized(cfg.env.id, summary["train/return_100"])
    run.summary(summary | ({"train/hns_100": hns} if hns is not None else {}))
    print(
        f"{cfg.name}: mean return {summary['train/return_100']:.2f} over the last {len(recent)} episodes, {episodes_seen} episodes, {step} steps"
    )


def evaluate(cfg: ReinforceConfig, checkpoint: dict) -> dict:
    """`pixlab eval RUN_DIR`: the checkpoint's stochastic policy over `eval.episodes` whole games, unclipped scores."""
    device = select_device(cfg.device)
    env_cfg = replace(
        cfg.env, num_envs=min(cfg.eval.num_envs, cfg.eval.episodes), max_episode_frames=cfg.eval.max_episode_frames
    )
    env, num_actions = make_env(replace(cfg, env=env_cfg))
    accel = Accelerator(cfg.accel, device)
    policy = accel.prepare(build_policy(cfg, env.single_observation_space.shape, num_actions), in_place=True)
    policy.load_state_dict(checkpoint["state"]["policy"])
    policy.eval()
    torch.manual_seed(cfg.seed + 20_000)
    player = Player(
        env,
        policy,
        env_cfg,
        cfg.agent,
        cfg.policy.action_set,
        device,
        seed=cfg.seed + 20_000,
        record=False,
        accel=accel,
    )
    quota = EpisodeQuota(cfg.eval.episodes, env_cfg.num_envs)  # so that short games are not over-counted
    scores: list[float] = []
    while len(scores) < cfg.eval.episodes:
        for ep in player.play(1)[0]:
            if quota.take(ep.env):
                scores.append(ep.score)
    env.close()
    result = {
        "step": checkpoint["step"],
        "eval/return": float(np.mean(scores)),
        "eval/return_std": float(np.std(scores)),
        "eval/episodes": len(scores),
    }
    hns = human_normalized(cfg.env.id, result["eval/return"])
    return result | ({"eval/hns": hns} if hns is not None else {})


def record_video(cfg: ReinforceConfig, policy: nn.Module, accel: Accelerator, device, path) -> Path:
    """One episode of `policy`, stochastic as `pixlab eval` plays it, filmed as `eval.video*` say (EpisodeVideo)
    to `path` + .mp4 or .gif; returns the path written. The episode is cut at eval.max_episode_frames or at the
    filmed steps, whichever comes first: frames past the film are not played."""
    frames = min(cfg.eval.max_episode_frames, cfg.eval.video_max_steps * cfg.env.frame_skip)
    env_cfg = replace(cfg.env, num_envs=1, max_episode_frames=frames)
    env, _ = make_env(replace(cfg, env=env_cfg))
    film = EpisodeVideo(
        env, env_cfg, path, cfg.eval, glimpse=cfg.policy.glimpse if cfg.policy.kind == "glimpse" else None
    )
    seed = cfg.seed + 30_000
    try:
        player = Player(
            env, policy, env_cfg, cfg.agent, cfg.policy.action_set, device, seed, record=False, accel=accel, film=film
        )
        player.play(1)
    except BaseException:
        film.abandon()
        raise
    finally:
        env.close()
    return film.close()


register(
    ReinforceConfig,
    train,
    evaluate,
    metrics=[
        {"name": "train/return_100", "goal": "maximize"},  # the mean return of the last 100 episodes
        {"name": "train/episode_return", "goal": "maximize"},
        {"name": "train/loss", "goal": "minimize"},  # policy-gradient surrogate - entropy bonus + value loss
        {"name": "train/entropy", "unit": "nats"},
        {"name": "train/hns_100", "goal": "maximize", "unit": "% of human", "once": True},
    ],
    step_unit="agent steps",
    media=["video"],
)
