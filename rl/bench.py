"""`pixlab bench dqn`: our DQN beside Stable-Baselines3's on Pong, same hyperparameters, same process; and the
`pixlab bench train` row of the Recurrent Attention Model (shared/cli/bench.py says how those are timed).

Both agents: Nature CNN, Adam 1e-4, batch 32, one gradient step per 4 agent steps, learning from step
`learning_starts`, target copy every 1,000 steps, the same replay size, one environment, no sticky
actions, 30 no-op starts, frame skip 4 with max-pooling, 84x84 grey, 4 stacked frames. SB3 runs on its
own Atari stack (PongNoFrameskip-v4 + AtariWrapper + VecFrameStack), ours on ale-py's vector env; the
env's cost is small beside the gradient step (about 0.5 ms per agent step against about 28 ms per step).

Ours runs with the DQN config's own `accel` (channels_last; precision auto: bf16 autocast where the CPU has
bf16 matrix units, fp32 elsewhere) and fused Adam: speed switches, not hyperparameters; torch.compile on request
(on 2 CPU cores it sped up the train step alone by 17% but slowed the whole loop). Reported for each:
agent steps/s while learning (from `learning_starts` plus a 250-step warm-up to the end), and the replay's
bytes per transition with the buffer's arrays fully allocated (SB3 allocates lazily; we count the arrays'
full size, which is what a filled buffer holds).

Our loop is also taken apart: each part timed alone on the same network, env and replay (an env step, an act
with its greedy forward, a replay write, a replay sample, a train step), and their sum per agent step set beside
the loop's own time per agent step. The loop's share = parts' time / loop's time: 100% means the loop costs no
more than its parts; below it, the loop loses time between them (allocations, cache misses, bookkeeping). Acting
counts only the steps that run the forward: the exploring ones skip it (rl/evaluate.py, epsilon_greedy).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from shared.config import CheckpointConfig, TrackingConfig
from shared.data.tensors import ImageData
from shared.errors import ConfigError
from shared.machine import describe_machine, format_machine
from shared.train.reference import TrainCase, plain_batches, plain_optimizer, throwaway_run, timed_loop

WARMUP = 250  # agent steps after learning_starts left out of both timings (allocations; compile, if on)
PART_CALLS = {"env_step": 200, "act": 200, "replay_write": 200, "replay_sample": 50, "train_step": 30}  # timed calls


def bench_dqn(
    steps: int = 3000, learning_starts: int = 1000, buffer_size: int = 100_000, seed: int = 0, compile: bool = False
) -> dict:
    if steps < learning_starts + 2 * WARMUP:
        raise ConfigError(
            f"--steps {steps} leaves no timed window: it must be at least --learning-starts ({learning_starts})"
            f" + {2 * WARMUP} (a warm-up of {WARMUP} steps, then at least one window of {WARMUP})"
        )
    cfg = _config(steps, learning_starts, buffer_size, seed, compile)
    ours = _ours(cfg)
    ours["parts"] = time_parts(cfg)
    ours["parts"]["loop_share"] = round(ours["learning_steps_per_s"] / ours["parts"]["steps_per_s"], 3)
    theirs = _sb3(steps, learning_starts, buffer_size, seed)
    return {
        "benchmark": "dqn",
        "env": "Pong, 1 env, no sticky actions",
        "steps": steps,
        "learning_starts": learning_starts,
        "timed_from_step": learning_starts + WARMUP,
        "buffer_size": buffer_size,
        "machine": describe_machine(torch.device("cpu")),
        "pixlab": ours,
        "sb3": theirs,
        "ratio_steps_per_s": round(ours["learning_steps_per_s"] / theirs["learning_steps_per_s"], 3),
        "ratio_bytes_per_transition": round(theirs["bytes_per_transition"] / ours["bytes_per_transition"], 2),
    }


def _config(steps: int, learning_starts: int, buffer_size: int, seed: int, compile: bool):
    from rl.dqn import DQNAgentConfig, DQNConfig
    from rl.envs import EnvConfig
    from rl.evaluate import EvalConfig

    return DQNConfig(
        name="bench-dqn",
        seed=seed,
        device="cpu",
        total_steps=steps,
        env=EnvConfig(id="ALE/Pong-v5", num_envs=1),
        agent=replace(
            DQNAgentConfig(), buffer_size=buffer_size, learning_starts=learning_starts, eps_decay_steps=steps
        ),
        eval=EvalConfig(every=0, episodes=1, num_envs=1, max_episode_frames=400, video=False),
        tracking=TrackingConfig(wandb="disabled", log_every=WARMUP),
        checkpoint=CheckpointConfig(every=10 * steps, keep_last=1),
        accel=replace(DQNConfig().accel, compile=compile),  # the trainer's own speed settings
    )


def _ours(cfg) -> dict:
    from rl.dqn import train
    from shared.train.accel import resolve_precision

    log_every, learning_starts = cfg.tracking.log_every, cfg.agent.learning_starts
    records = throwaway_run(cfg, train, ["pixlab", "bench", "dqn"])
    # Log windows that lie wholly after the warm-up: the learning phase.
    learning = [r for r in records if "train/steps_per_s" in r and r["step"] - log_every >= learning_starts + WARMUP]
    seconds = sum(log_every / r["train/steps_per_s"] for r in learning)
    summary = records[-1]["summary"]
    return {
        "learning_steps_per_s": round(len(learning) * log_every / seconds, 1),
        "bytes_per_transition": round(summary["replay/bytes_per_transition"], 1),
        "gradient_steps": summary["train/updates"],
        "precision": resolve_precision(cfg.accel.precision, torch.device("cpu")),
        "settings": f"channels_last={cfg.accel.channels_last}, compile={cfg.accel.compile}",
    }


def time_parts(cfg) -> dict:
    """Each part of our DQN loop alone, in ms per call, and what they sum to per agent step while learning.

    The replay is filled with `learning_starts` real transitions (their env steps and writes are timed), then
    samples and train steps are timed on it, and the greedy forward on real observations.
    """
    from rl.dqn import build_q_network, newest_frame, td_loss
    from rl.envs import make_vec_env
    from rl.evaluate import epsilon_greedy
    from rl.replay import FrameReplay
    from shared.train.accel import Accelerator
    from shared.train.optim import make_optimizer

    a, device = cfg.agent, torch.device("cpu")
    torch.manual_seed(cfg.seed)
    env = make_vec_env(cfg.env)
    obs_shape, num_actions = env.single_observation_space.shape, int(env.single_action_space.n)
    accel = Accelerator(cfg.accel, device)
    q = build_q_network(cfg, obs_shape, num_actions)
    target = build_q_network(cfg, obs_shape, num_actions).requires_grad_(False)
    q_learn, target_learn = accel.prepare(q), accel.prepare(target)
    optimizer = make_optimizer(q.parameters(), cfg.optim)
    replay = FrameReplay(a.buffer_size, 1, frame_shape=obs_shape[1:], stack=obs_shape[0], gamma=a.gamma, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    act = epsilon_greedy(q, device, num_actions, rng)
    seconds = dict.fromkeys(PART_CALLS, 0.0)

    def timed(part: str, call, *args):
        start = time.perf_counter()
        out = call(*args)
        seconds[part] += time.perf_counter() - start
        return out

    obs, _ = env.reset(seed=cfg.seed)
    replay.reset(newest_frame(obs))
    autoreset = np.zeros(1, dtype=bool)
    for i in range(max(a.learning_starts, PART_CALLS["env_step"])):
        actions = rng.integers(0, num_actions, 1)
        obs, rewards, terminated, truncated, _ = (
            timed("env_step", env.step, actions) if i < PART_CALLS["env_step"] else env.step(actions)
        )
        args = (actions, np.sign(rewards), terminated, truncated, newest_frame(obs), autoreset)
        timed("replay_write", replay.step, *args) if i < PART_CALLS["replay_write"] else replay.step(*args)
        autoreset = terminated | truncated
    for _ in range(PART_CALLS["act"]):
        timed("act", act, obs, 0.0)  # epsilon 0: every call runs the forward
    env.close()

    def as_input(x: np.ndarray) -> torch.Tensor:
        return accel.to_input(torch.from_numpy(x).to(device))

    def train_step(batch) -> None:
        with accel.autocast():
            loss, _, _ = td_loss(q_learn, target_learn, batch, as_input, a, device)
        accel.backward_step(loss, optimizer, q.parameters(), a.max_grad_norm)

    train_step(replay.sample(a.batch_size))  # warm-up: the allocator's first buffers, compile if on
    for _ in range(PART_CALLS["replay_sample"]):
        timed("replay_sample", replay.sample, a.batch_size)
    for _ in range(PART_CALLS["train_step"]):
        timed("train_step", train_step, replay.sample(a.batch_size))
    ms = {part: 1000 * seconds[part] / calls for part, calls in PART_CALLS.items()}
    # The timed window's mean epsilon: acting runs the forward on the greedy share of steps alone.
    first = cfg.agent.learning_starts + WARMUP
    window = np.arange(first, cfg.total_steps) if cfg.total_steps > first else np.array([first])
    epsilon = a.eps_end + (a.eps_start - a.eps_end) * np.clip(1 - window / a.eps_decay_steps, 0.0, 1.0)
    greedy = float(1 - epsilon.mean())
    per_step = (
        ms["env_step"]
        + ms["replay_write"]
        + greedy * ms["act"]
        + (ms["replay_sample"] + ms["train_step"]) / a.train_freq
    )
    return {
        "ms_per_call": {part: round(value, 3) for part, value in ms.items()},
        "greedy_fraction": round(greedy, 3),
        "train_freq": a.train_freq,
        "ms_per_agent_step": round(per_step, 3),
        "steps_per_s": round(1000 / per_step, 1),
    }


def _sb3(steps: int, learning_starts: int, buffer_size: int, seed: int) -> dict:
    try:
        from stable_baselines3 import DQN
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack
    except ImportError as e:
        raise SystemExit(f"pixlab bench dqn needs Stable-Baselines3: pip install -e '.[bench]' ({e})")

    class LearningClock(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.start = None

        def _on_step(self) -> bool:
            if self.start is None and self.num_timesteps >= learning_starts + WARMUP:
                self.start = (time.perf_counter(), self.num_timesteps)
            return True

    env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=1, seed=seed), n_stack=4)
    model = DQN(
        "CnnPolicy",
        env,
        learning_rate=1e-4,
        buffer_size=buffer_size,
        learning_starts=learning_starts,
        batch_size=32,
        train_freq=4,
        gradient_steps=1,
        target_update_interval=1000,
        exploration_fraction=1.0,
        exploration_final_eps=0.01,
        optimize_memory_usage=False,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    clock = LearningClock()
    model.learn(total_timesteps=steps, callback=clock)
    elapsed = time.perf_counter() - clock.start[0]
    buffer = model.replay_buffer
    arrays = [
        buffer.observations,
        buffer.next_observations,
        buffer.actions,
        buffer.rewards,
        buffer.dones,
        buffer.timeouts,
    ]
    total_bytes = sum(a.nbytes for a in arrays if a is not None)
    env.close()
    return {
        "learning_steps_per_s": round((steps - clock.start[1]) / elapsed, 1),
        "bytes_per_transition": round(total_bytes / buffer.buffer_size, 1),
        "gradient_steps": model._n_updates,
        "precision": "fp32",
        "settings": "SB3 defaults",
    }


def format_report(report: dict) -> str:
    ours, theirs, parts = report["pixlab"], report["sb3"], report["pixlab"]["parts"]
    calls = "  ".join(f"{part} {ms:.2f}" for part, ms in parts["ms_per_call"].items())
    return "\n".join(
        [
            f"dqn bench: {report['env']}, {report['steps']} steps, learning from {report['learning_starts']}, buffer {report['buffer_size']}",
            f"machine: {format_machine(report['machine'])}",
            f"{'':8} {'steps/s learning':>17} {'bytes/transition':>17} {'gradient steps':>15}  precision",
            f"{'pixlab':8} {ours['learning_steps_per_s']:>17.1f} {ours['bytes_per_transition']:>17.1f} {ours['gradient_steps']:>15}  {ours['precision']}",
            f"{'SB3':8} {theirs['learning_steps_per_s']:>17.1f} {theirs['bytes_per_transition']:>17.1f} {theirs['gradient_steps']:>15}  {theirs['precision']}",
            f"ratio: {report['ratio_steps_per_s']:.2f}x steps/s, {report['ratio_bytes_per_transition']:.1f}x less memory per transition",
            f"pixlab's parts alone, ms per call: {calls}",
            f"  per agent step (act on {parts['greedy_fraction']:.0%} of steps, sample and train step every {parts['train_freq']}): "
            f"{parts['ms_per_agent_step']:.2f} ms = {parts['steps_per_s']:.1f} steps/s; the loop runs at {parts['loop_share']:.0%} of that",
        ]
    )


def ram_reference(cfg, data: ImageData, device: torch.device):
    """RAM on float images in [0, 1]: the hybrid loss (classification NLL, REINFORCE on the locations, baseline MSE)."""
    from rl.ram import RecurrentAttention, hybrid_loss

    model = RecurrentAttention(1, data.num_classes, cfg.model).to(device)
    optimizer = plain_optimizer(model.parameters(), cfg.optim)
    batches = plain_batches(
        [data.train.images.cpu().float().div(255), data.train.labels.cpu()], cfg.train.batch_size, device
    )

    def step() -> None:
        x, y = next(batches)
        loss, _ = hybrid_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed_loop(step, device)


TRAIN_CASES = {"ram": TrainCase("ram", "ram/mnist.yaml", "rl.ram", 100, ram_reference, ("task.test_limit=100",))}
