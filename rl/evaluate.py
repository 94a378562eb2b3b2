"""The Nature evaluation protocol (Mnih et al. 2015, Methods, "Evaluation procedure"): 30 episodes, each
after up to 30 no-op actions, epsilon-greedy with epsilon 0.05, capped at 5 minutes of play (18,000
frames), scored by the unclipped game score, with no life-loss terminals.

Human-normalised score = 100 (agent - random) / (human - random), with the random and human scores of
the Nature paper's Extended Data Table 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from rl.envs import EnvConfig, TrainingSignal, make_vec_env

# Nature (Mnih et al. 2015), Extended Data Table 2: (random play, professional human tester).
NATURE_HUMAN_TABLE = {
    "ALE/Pong-v5": (-20.7, 9.3),
    "ALE/Breakout-v5": (1.7, 31.8),
    "ALE/SpaceInvaders-v5": (148.0, 1652.0),
    "ALE/Seaquest-v5": (68.4, 20182.0),
    "ALE/BeamRider-v5": (363.9, 5775.0),
    "ALE/Enduro-v5": (0.0, 309.6),
    "ALE/Qbert-v5": (163.9, 13455.0),
}


@dataclass
class EvalConfig:
    every: int = 250_000  # agent steps between evaluations during training (0: only at the end)
    episodes: int = 30
    epsilon: float = 0.05
    max_episode_frames: int = 18_000  # 5 minutes at 60 frames/s
    num_envs: int = 8  # episodes played side by side
    video: bool = True  # a GIF of the first episode in media/ and W&B (Atari pixels only)


def human_normalized(env_id: str, score: float) -> Optional[float]:
    if env_id not in NATURE_HUMAN_TABLE:
        return None
    random, human = NATURE_HUMAN_TABLE[env_id]
    return 100 * (score - random) / (human - random)


class EpisodeQuota:
    """Each of `num_envs` envs plays a fixed share of `episodes` (the first `episodes % num_envs` one more),
    so that short episodes are not over-counted (taking the first 30 to finish would favour them)."""

    def __init__(self, episodes: int, num_envs: int) -> None:
        self.left = np.full(num_envs, episodes // num_envs)
        self.left[: episodes % num_envs] += 1

    def take(self, env: int) -> bool:
        """Whether an episode that env `env` finished counts (it is then counted against its share)."""
        if self.left[env] == 0:
            return False
        self.left[env] -= 1
        return True


def evaluate_policy(
    act: Callable[[np.ndarray, float], np.ndarray],
    env_cfg: EnvConfig,
    cfg: EvalConfig,
    seed: int,
    video_path: Optional[Path] = None,
) -> dict:
    """Play `cfg.episodes` episodes with `act(obs, epsilon) -> actions`; return mean/std score and HNS.

    Episodes are played `cfg.num_envs` at a time, each env playing a fixed quota of them (EpisodeQuota).
    """
    env_cfg = replace(
        env_cfg, num_envs=min(cfg.num_envs, cfg.episodes), clip_rewards=False, terminal_on_life_loss=False
    )
    env = make_vec_env(env_cfg, max_episode_frames=cfg.max_episode_frames)
    signal = TrainingSignal(env_cfg, env_cfg.num_envs)
    obs, info = env.reset(seed=seed)
    signal.reset(info)
    frames = [] if video_path is not None and obs.ndim == 4 else None
    quota = EpisodeQuota(cfg.episodes, env_cfg.num_envs)
    scores: list[float] = []
    lengths: list[int] = []
    while len(scores) < cfg.episodes:
        obs, rewards, terminated, truncated, info = env.step(act(obs, cfg.epsilon))
        signal.step(rewards, terminated, truncated, info)
        if frames is not None:
            frames.append(obs[0, -1])
            if terminated[0] or truncated[0]:
                _write_gif(frames, video_path)
                frames = None
        for e, score, length in signal.pop_finished():
            if quota.take(e):
                scores.append(score)
                lengths.append(length)
    env.close()
    result = {
        "eval/return": float(np.mean(scores)),
        "eval/return_std": float(np.std(scores)),
        "eval/episode_length": float(np.mean(lengths)),
        "eval/episodes": len(scores),
    }
    hns = human_normalized(env_cfg.id, result["eval/return"])
    if hns is not None:
        result["eval/hns"] = hns
    return result


def _write_gif(frames: list[np.ndarray], path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames[::2]]  # every other agent step: 7.5 frames/s of play
    images[0].save(path, save_all=True, append_images=images[1:], duration=67, loop=0)


def epsilon_greedy(q_network: torch.nn.Module, device: torch.device, num_actions: int, rng: np.random.Generator):
    """act(obs, epsilon): greedy actions from `q_network` in inference mode, random with probability epsilon.

    The dice are cast first, in the same order as always, so that a step on which every env explores (most
    of DQN's early training) skips the forward pass without changing any draw."""

    def act(obs: np.ndarray, epsilon: float) -> np.ndarray:
        explore = rng.random(len(obs)) < epsilon
        random = rng.integers(0, num_actions, len(obs))
        if explore.all():
            return random
        with torch.inference_mode():
            greedy = q_network(torch.as_tensor(obs, device=device)).argmax(1).cpu().numpy()
        return np.where(explore, random, greedy)

    return act
