"""`pixlab bench dqn`: our DQN beside Stable-Baselines3's on Pong, same hyperparameters, same process.

Both agents: Nature CNN, Adam 1e-4, batch 32, one gradient step per 4 agent steps, learning from step
`learning_starts`, target copy every 1,000 steps, the same replay size, one environment, no sticky
actions, 30 no-op starts, frame skip 4 with max-pooling, 84x84 grey, 4 stacked frames. SB3 runs on its
own Atari stack (PongNoFrameskip-v4 + AtariWrapper + VecFrameStack), ours on ale-py's vector env; the
env's cost is small beside the gradient step (about 0.5 ms per agent step against about 28 ms per step).

Ours runs with channels_last and fused Adam (speed switches, not hyperparameters); torch.compile on request
(on 2 CPU cores it sped up the train step alone by 17% but slowed the whole loop). Reported for each:
agent steps/s while learning (from `learning_starts` plus a 250-step warm-up to the end), and the replay's
bytes per transition with the buffer's arrays fully allocated (SB3 allocates lazily; we count the arrays'
full size, which is what a filled buffer holds).
"""

from __future__ import annotations

import contextlib
import platform
import sys
import tempfile
import time
from dataclasses import replace

import torch

from shared.config import CheckpointConfig, TrackingConfig
from shared.run import Run
from shared.tracking import read_metrics


WARMUP = 250  # agent steps after learning_starts left out of both timings (allocations; compile, if on)


def bench_dqn(steps: int = 3000, learning_starts: int = 1000, buffer_size: int = 100_000, seed: int = 0, compile: bool = False) -> dict:
    ours = _ours(steps, learning_starts, buffer_size, seed, compile)
    theirs = _sb3(steps, learning_starts, buffer_size, seed)
    return {
        "benchmark": "dqn",
        "env": "Pong, 1 env, no sticky actions",
        "steps": steps,
        "learning_starts": learning_starts,
        "timed_from_step": learning_starts + WARMUP,
        "buffer_size": buffer_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "pixlab": ours,
        "sb3": theirs,
        "ratio_steps_per_s": round(ours["learning_steps_per_s"] / theirs["learning_steps_per_s"], 3),
        "ratio_bytes_per_transition": round(theirs["bytes_per_transition"] / ours["bytes_per_transition"], 2),
    }


def _ours(steps: int, learning_starts: int, buffer_size: int, seed: int, compile: bool) -> dict:
    from rl.dqn import AgentConfig, DQNConfig, train
    from rl.envs import EnvConfig
    from rl.evaluate import EvalConfig

    from shared.train.accel import AccelConfig

    log_every = WARMUP
    cfg = DQNConfig(
        name="bench-dqn",
        seed=seed,
        device="cpu",
        total_steps=steps,
        env=EnvConfig(id="ALE/Pong-v5", num_envs=1),
        agent=replace(AgentConfig(), buffer_size=buffer_size, learning_starts=learning_starts, eps_decay_steps=steps),
        eval=EvalConfig(every=0, episodes=1, num_envs=1, max_episode_frames=400, video=False),
        tracking=TrackingConfig(wandb="disabled", log_every=log_every),
        checkpoint=CheckpointConfig(every=10 * steps, keep_last=1),
        accel=AccelConfig(channels_last=True, compile=compile),
    )
    with tempfile.TemporaryDirectory() as folder:
        cfg.runs_dir = folder
        with Run.create(cfg, argv=["pixlab", "bench", "dqn"]) as run, contextlib.redirect_stdout(sys.stderr):
            train(cfg, run)  # its closing line goes to stderr: stdout carries the report alone
        records = read_metrics(run.dir / "metrics.jsonl")
    # Log windows that lie wholly after the warm-up: the learning phase.
    learning = [r for r in records if "train/steps_per_s" in r and r["step"] - log_every >= learning_starts + WARMUP]
    seconds = sum(log_every / r["train/steps_per_s"] for r in learning)
    summary = records[-1]["summary"]
    return {
        "learning_steps_per_s": round(len(learning) * log_every / seconds, 1),
        "bytes_per_transition": round(summary["replay/bytes_per_transition"], 1),
        "gradient_steps": summary["train/updates"],
        "settings": f"channels_last, compile={compile}",
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
    arrays = [buffer.observations, buffer.next_observations, buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
    total_bytes = sum(a.nbytes for a in arrays if a is not None)
    env.close()
    return {
        "learning_steps_per_s": round((steps - clock.start[1]) / elapsed, 1),
        "bytes_per_transition": round(total_bytes / buffer.buffer_size, 1),
        "gradient_steps": model._n_updates,
        "settings": "SB3 defaults",
    }


def format_report(report: dict) -> str:
    ours, theirs = report["pixlab"], report["sb3"]
    return "\n".join(
        [
            f"dqn bench: {report['env']}, {report['steps']} steps, learning from {report['learning_starts']}, "
            f"buffer {report['buffer_size']} ({report['threads']} threads, torch {report['torch']})",
            f"{'':8} {'steps/s learning':>17} {'bytes/transition':>17} {'gradient steps':>15}",
            f"{'pixlab':8} {ours['learning_steps_per_s']:>17.1f} {ours['bytes_per_transition']:>17.1f} {ours['gradient_steps']:>15}",
            f"{'SB3':8} {theirs['learning_steps_per_s']:>17.1f} {theirs['bytes_per_transition']:>17.1f} {theirs['gradient_steps']:>15}",
            f"ratio: {report['ratio_steps_per_s']:.2f}x steps/s, {report['ratio_bytes_per_transition']:.1f}x less memory per transition",
        ]
    )
