"""Deep Q-learning with experience replay (Mnih et al. 2015, "Human-level control through deep
reinforcement learning"), with the switches researchers turn on routinely: Double DQN (van Hasselt et
al. 2016), dueling heads (Wang et al. 2016), n-step returns and prioritized replay (Schaul et al. 2016).

    pixlab train configs/dqn/pong.yaml
    pixlab eval runs/<id>

One loop, top to bottom: act epsilon-greedily in N environments at once (inference mode, one batched
forward), store each new frame once in the replay, and every `train_freq` agent steps regress
Q(s, a) on r + gamma^n max_a' Q_target(s', a') with the Huber loss; copy the online network into the
target every `target_update` agent steps. Step counts are agent steps summed over environments (one
agent step = 4 frames with frame skip 4), as in CleanRL and SB3.

A resumed run restores networks, optimizer, counters, RNGs and (with `agent.replay_in_checkpoint`) the
replay; the environments start new episodes, so it continues statistically, not bit for bit.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from rl.envs import EnvConfig, TrainingSignal, check_env, make_vec_env
from rl.evaluate import EvalConfig, check_video, epsilon_greedy, evaluate_policy
from rl.replay import FrameReplay
from shared.config import RunConfig, register, require, require_positive
from shared.models.mlp import MLPQNetwork
from shared.models.nature_cnn import NatureQNetwork
from shared.run import Run
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.optim import OptimConfig, make_optimizer


@dataclass
class DQNAgentConfig:
    buffer_size: int = 1_000_000
    batch_size: int = 32
    gamma: float = 0.99
    learning_starts: int = 80_000  # agent steps of random-policy data before learning
    train_freq: int = 4  # agent steps per gradient step
    target_update: int = 1_000  # agent steps between copies of the online network into the target
    eps_start: float = 1.0
    eps_end: float = 0.01
    eps_decay_steps: int = 1_000_000  # linear decay from eps_start to eps_end over these agent steps
    double: bool = False
    dueling: bool = False
    n_step: int = 1
    prioritized: bool = False
    per_alpha: float = 0.6
    per_beta_start: float = 0.4  # importance-sampling exponent, annealed to 1 by the end of training
    loss: Literal["huber", "mse"] = "huber"
    max_grad_norm: Optional[float] = 10.0
    hidden: list[int] = field(default_factory=lambda: [120, 84])  # MLP for vector observations
    replay_in_checkpoint: bool = False  # a 1M-frame replay is 7 GB: off unless asked


@dataclass
class DQNConfig(RunConfig):
    algo: str = "dqn"
    total_steps: int = 10_000_000  # agent steps, summed over environments
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: DQNAgentConfig = field(default_factory=DQNAgentConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-4, eps=1e-8))
    eval: EvalConfig = field(default_factory=EvalConfig)
    # channels_last: +22% train steps/s for the Nature CNN on 2 CPU cores; compile helped the step alone
    # but slowed the whole loop there (163 against 190 agent steps/s), so it is off unless asked for
    accel: AccelConfig = field(default_factory=lambda: AccelConfig(channels_last=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        a = self.agent
        require_positive(self, "total_steps", "env.num_envs")
        require(a.n_step >= 1, "agent.n_step", "must be >= 1", a.n_step)
        require(0 < a.gamma <= 1, "agent.gamma", "must be in (0, 1]", a.gamma)
        require(
            a.train_freq > 0 and a.target_update > 0,
            "agent.train_freq",
            "and agent.target_update must be > 0",
            a.train_freq,
        )
        require(
            a.learning_starts >= a.batch_size,
            "agent.learning_starts",
            f"must be >= agent.batch_size ({a.batch_size})",
            a.learning_starts,
        )
        require(
            a.buffer_size >= a.batch_size,
            "agent.buffer_size",
            f"must be >= agent.batch_size ({a.batch_size})",
            a.buffer_size,
        )
        require(self.eval.episodes > 0, "eval.episodes", "must be > 0", self.eval.episodes)
        check_video(self.eval, self.env)

    def check(self) -> None:
        check_env(self.env)


def build_q_network(cfg: DQNConfig, obs_shape: tuple, num_actions: int) -> nn.Module:
    if len(obs_shape) == 3:  # (stack, H, W) pixels
        return NatureQNetwork(num_actions, in_channels=obs_shape[0], dueling=cfg.agent.dueling)
    return MLPQNetwork(int(np.prod(obs_shape)), num_actions, cfg.agent.hidden, dueling=cfg.agent.dueling)


def newest_frame(obs: np.ndarray) -> np.ndarray:
    """What the replay stores per step: the last frame of a pixel stack, or the whole vector observation."""
    return obs[:, -1] if obs.ndim == 4 else obs


def train(cfg: DQNConfig, run: Run) -> None:
    a = cfg.agent
    env = make_vec_env(cfg.env)
    num_envs, num_actions = cfg.env.num_envs, int(env.single_action_space.n)
    obs_shape = env.single_observation_space.shape
    pixels = len(obs_shape) == 3
    accel = Accelerator(cfg.accel, run.device)
    q = build_q_network(cfg, obs_shape, num_actions)
    target = copy.deepcopy(q).requires_grad_(False)
    # The learner calls the prepared (maybe compiled) networks; acting calls `q` itself, eagerly.
    q_learn, target_learn = accel.prepare(q), accel.prepare(target)
    optimizer = make_optimizer(q.parameters(), cfg.optim)
    replay = FrameReplay(
        a.buffer_size,
        num_envs,
        frame_shape=obs_shape[1:] if pixels else obs_shape,
        stack=obs_shape[0] if pixels else 1,
        n_step=a.n_step,
        gamma=a.gamma,
        prioritized=a.prioritized,
        alpha=a.per_alpha,
        frame_dtype=env.single_observation_space.dtype,
        seed=cfg.seed,
    )
    rng = np.random.default_rng(cfg.seed)
    explorer = RandomState(rng)
    objects = {"q": q, "target": target, "optimizer": optimizer, "explorer": explorer, "accel": accel}
    if a.replay_in_checkpoint:
        objects["replay"] = replay
    state = run.restore(objects) or {"step": 0, "updates": 0, "resumes": 0}
    step, updates = state["step"], state["updates"]
    resumes = state["resumes"] + (1 if step else 0)
    act = epsilon_greedy(q, run.device, num_actions, rng)

    signal = TrainingSignal(cfg.env, num_envs)
    obs, info = env.reset(seed=cfg.seed + 1000 * resumes)  # a resumed run starts fresh episodes
    signal.reset(info)
    replay.reset(newest_frame(obs))

    def save() -> None:
        run.save(step, objects, {"updates": updates, "resumes": resumes})

    def as_input(x: np.ndarray) -> torch.Tensor:  # replay batch (B, stack, ...) -> network input
        x = torch.from_numpy(x).to(run.device)
        return accel.to_input(x) if pixels else x.flatten(1)

    progress = tqdm(total=cfg.total_steps, initial=step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True)
    losses, q_means, episodes = [], [], []
    clock, clock_step = time.perf_counter(), step
    next_log = _next_multiple(step, cfg.tracking.log_every)
    next_target = _next_multiple(step, a.target_update)
    next_checkpoint = _next_multiple(step, cfg.checkpoint.every)
    next_eval = _next_multiple(step, cfg.eval.every) if cfg.eval.every else math.inf
    while step < cfg.total_steps and not run.should_stop:
        epsilon = a.eps_end + (a.eps_start - a.eps_end) * max(0.0, 1 - step / a.eps_decay_steps)
        actions = act(obs, epsilon)
        next_obs, rewards, terminated, truncated, info = env.step(actions)
        learner_rewards, terminals, autoreset = signal.step(rewards, terminated, truncated, info)
        replay.step(actions, learner_rewards, terminals, truncated, newest_frame(next_obs), autoreset)
        obs = next_obs
        previous, step = step, step + num_envs
        progress.update(num_envs)
        episodes += signal.pop_finished()

        if step >= a.learning_starts:
            # One gradient step per `train_freq` agent steps, however many envs stepped together.
            for _ in range(step // a.train_freq - max(previous, a.learning_starts - 1) // a.train_freq):
                beta = a.per_beta_start + (1 - a.per_beta_start) * min(1.0, step / cfg.total_steps)
                batch = replay.sample(a.batch_size, beta)
                with accel.autocast():
                    loss, td, q_taken = td_loss(q_learn, target_learn, batch, as_input, a, run.device)
                accel.backward_step(loss, optimizer, q.parameters(), a.max_grad_norm)
                if a.prioritized:
                    replay.update_priorities(batch.indices, td.abs().cpu().numpy() + 1e-6)
                updates += 1
                losses.append(loss.detach())
                q_means.append(q_taken.detach().mean())
        if step >= next_target:
            target.load_state_dict(q.state_dict())
            next_target = _next_multiple(step, a.target_update)
        if step >= next_log:
            elapsed = time.perf_counter() - clock
            metrics = {
                "train/epsilon": epsilon,
                "train/steps_per_s": (step - clock_step) / max(elapsed, 1e-9),
                "train/updates": updates,
            }
            if losses:
                metrics["train/loss"] = torch.stack(losses).mean().item()
                metrics["train/q"] = torch.stack(q_means).mean().item()
                run.check_finite("train/loss", metrics["train/loss"], step)
            if episodes:
                metrics["train/episode_return"] = float(np.mean([s for _, s, _ in episodes]))
                metrics["train/episode_length"] = float(np.mean([n for _, _, n in episodes]))
                progress.set_postfix(ret=f"{metrics['train/episode_return']:.1f}", eps=f"{epsilon:.2f}")
            run.log(metrics, step)
            losses, q_means, episodes = [], [], []
            clock, clock_step = time.perf_counter(), step
            next_log = _next_multiple(step, cfg.tracking.log_every)
        if step >= next_eval and step < cfg.total_steps:  # the last step's evaluation is the final one, below
            run.log(evaluate(cfg, q, run, step), step)
            next_eval = _next_multiple(step, cfg.eval.every)
        if step >= next_checkpoint or run.should_stop:
            save()
            next_checkpoint = _next_multiple(step, cfg.checkpoint.every)
    progress.close()
    env.close()
    if run.should_stop:
        return
    save()
    final = evaluate(cfg, q, run, step)
    run.log(final, step)
    run.summary(
        final
        | {"train/steps": step, "train/updates": updates, "replay/bytes_per_transition": replay.bytes_per_transition}
    )
    print(
        f"{cfg.name}: evaluation return {final['eval/return']:.2f} +/- {final['eval/return_std']:.2f} over {final['eval/episodes']} episodes after {step} steps"
    )


def td_loss(q: nn.Module, target: nn.Module, batch, as_input, a: DQNAgentConfig, device: torch.device):
    """Huber (or squared) TD error of Q(s, a) against r^(n) + gamma^n Q_target(s', argmax), weighted for PER."""
    actions = torch.from_numpy(batch.actions).to(device=device, dtype=torch.int64)
    returns = torch.from_numpy(batch.returns).to(device)
    discounts = torch.from_numpy(batch.discounts).to(device)
    weights = torch.from_numpy(batch.weights).to(device)
    with torch.no_grad():
        next_obs = as_input(batch.next_obs)
        next_target = target(next_obs)
        if a.double:  # the online network picks the action, the target network values it
            best = q(next_obs).argmax(1, keepdim=True)
        else:
            best = next_target.argmax(1, keepdim=True)
        targets = returns + discounts * next_target.gather(1, best).squeeze(1).float()
    q_taken = q(as_input(batch.obs)).gather(1, actions[:, None]).squeeze(1).float()
    td = targets - q_taken
    per_sample = F.smooth_l1_loss(q_taken, targets, reduction="none") if a.loss == "huber" else td.pow(2)
    return (weights * per_sample).mean(), td.detach(), q_taken


def evaluate(cfg: DQNConfig, q: nn.Module, run: Run, step: int) -> dict:
    q.eval()
    act = epsilon_greedy(q, run.device, q_num_actions(q), np.random.default_rng(cfg.seed + step))
    video = run.dir / "media" / f"video-{step:09d}" if cfg.eval.video else None  # .mp4, or .gif without ffmpeg
    result = evaluate_policy(act, cfg.env, cfg.eval, seed=cfg.seed + 10_000 + step, video_path=video)
    q.train()
    written = result.pop("video", None)
    if written is not None:
        run.log_video("video", written, step)  # the stable W&B media key
    return result


def q_num_actions(q: nn.Module) -> int:
    last = [m for m in q.modules() if isinstance(m, nn.Linear)][-1]
    return last.out_features


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


class RandomState:
    """The exploration RNG as a checkpointable object (numpy's bit-generator state is a dict of ints)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def evaluate_checkpoint(cfg: DQNConfig, checkpoint: dict) -> dict:
    """`pixlab eval RUN_DIR`: the Nature protocol on the checkpoint's online network."""
    device = select_device(cfg.device)
    env = make_vec_env(cfg.env)
    q = build_q_network(cfg, env.single_observation_space.shape, int(env.single_action_space.n)).to(device)
    env.close()
    q.load_state_dict(checkpoint["state"]["q"])
    q.eval()  # acting is eager and in the default layout: accel settings only speed up learning
    act = epsilon_greedy(q, device, q_num_actions(q), np.random.default_rng(cfg.seed))
    return {"step": checkpoint["step"]} | evaluate_policy(act, cfg.env, cfg.eval, seed=cfg.seed + 20_000)


register(
    DQNConfig,
    train,
    evaluate_checkpoint,
    metrics=[
        {"name": "eval/return", "goal": "maximize"},  # the evaluation policy (eps 0.05, no-op starts)
        {"name": "eval/hns", "goal": "maximize", "unit": "% of human"},  # Atari games of the Nature table only
        {"name": "train/episode_return", "goal": "maximize"},  # the training policy; also with eval.every=0
        {"name": "train/loss", "goal": "minimize"},  # the Huber TD loss
        {"name": "train/q"},  # mean Q of the actions taken
        {"name": "train/epsilon"},
    ],
    step_unit="agent steps",
    media=["video"],
)
