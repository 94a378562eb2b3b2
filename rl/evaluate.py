"""The Nature evaluation protocol (Mnih et al. 2015, Methods, "Evaluation procedure"): 30 episodes, each
after up to 30 no-op actions, epsilon-greedy with epsilon 0.05, capped at 5 minutes of play (18,000
frames), scored by the unclipped game score, with no life-loss terminals.

Human-normalised score = 100 (agent - random) / (human - random), with the random and human scores of
the Nature paper's Extended Data Table 2.

Videos (`EpisodeVideo`): the first episode of environment 0, one frame per agent step at 60 / frame_skip
frames/s (real time: 15 at frame skip 4), as MP4 where imageio-ffmpeg's encoder is installed and GIF otherwise
(shared.media). `video_view: game` films the emulator's full-colour 210x160 screen, as gymnasium's RecordVideo
does (ale-py's vector env keeps its emulators to itself: a twin plays along, rl.envs.GameScreen); `agent` films
what the network reads, scaled up 3x: the newest 84x84 frame of the stack (252x252), or Karpathy's 80x80
difference frame (240x240). The running game score is drawn at the bottom left, and the glimpse agent's
glimpse where it looked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from rl.envs import EnvConfig, GameScreen, TrainingSignal, is_atari, make_vec_env
from shared.config import require
from shared.media import VideoWriter, draw_box, draw_text
from shared.models.glimpse import GlimpseConfig, location_to_pixel

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


ATARI_FPS = 60  # emulator frames per second of play
AGENT_VIEW_SCALE = 3  # the agent's view is scaled up this many times (nearest) to be seen in a video
# The glimpse's patches, finest first: yellow, orange, red, magenta (coarser patches than 4 share the last).
GLIMPSE_COLOURS = [(255, 255, 0), (255, 150, 0), (255, 40, 40), (255, 0, 255)]


@dataclass
class VideoConfig:
    """What an evaluation films: the `eval:` keys of the RL trainers that play Atari."""

    video: bool = True  # a video of the first episode in media/ and W&B (Atari only)
    video_view: Literal["game", "agent"] = "game"  # the colour screen, 210x160; or the network's input, scaled 3x
    video_max_steps: int = 4500  # agent steps filmed (a frame each): 4500 x 4 frames, the 18,000-frame Nature cap


def check_video(cfg: VideoConfig, env_cfg: EnvConfig) -> None:
    """The `eval.video*` keys that cannot work with `env_cfg`, as ConfigErrors (exit 2)."""
    require(cfg.video_max_steps > 0, "eval.video_max_steps", "must be > 0", cfg.video_max_steps)
    pixels = env_cfg.obs_type == "pixels"
    require(
        not cfg.video or cfg.video_view == "game" or pixels,
        "eval.video_view",
        f"'agent' films the network's image input; env.obs_type={env_cfg.obs_type!r} has none (use 'game')",
        cfg.video_view,
    )


@dataclass
class EvalConfig(VideoConfig):
    every: int = 250_000  # agent steps between evaluations during training (0: only at the end)
    episodes: int = 30
    epsilon: float = 0.05
    max_episode_frames: int = 18_000  # 5 minutes at 60 frames/s
    num_envs: int = 8  # episodes played side by side


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
    With `video_path` (no suffix needed) and an Atari env, env 0's first episode is filmed (EpisodeVideo) and
    the result also holds "video": the path written, .mp4 or .gif. Filming changes no score.
    """
    env_cfg = replace(
        env_cfg, num_envs=min(cfg.num_envs, cfg.episodes), clip_rewards=False, terminal_on_life_loss=False
    )
    env = make_vec_env(env_cfg, max_episode_frames=cfg.max_episode_frames)
    signal = TrainingSignal(env_cfg, env_cfg.num_envs)
    film = None
    if video_path is not None and is_atari(env_cfg.id):
        film = EpisodeVideo(env, env_cfg, video_path, cfg, max_episode_frames=cfg.max_episode_frames)
    obs, info = env.reset(seed=seed)
    signal.reset(info)
    quota = EpisodeQuota(cfg.episodes, env_cfg.num_envs)
    scores: list[float] = []
    lengths: list[int] = []
    try:
        if film is not None:
            film.reset(obs, seed)
        while len(scores) < cfg.episodes:
            actions = act(obs, cfg.epsilon)
            obs, rewards, terminated, truncated, info = env.step(actions)
            signal.step(rewards, terminated, truncated, info)
            if film is not None:
                film.step(actions, obs, rewards, terminated | truncated)
            for e, score, length in signal.pop_finished():
                if quota.take(e):
                    scores.append(score)
                    lengths.append(length)
    except BaseException:
        if film is not None:
            film.abandon()
        raise
    written = film.close() if film is not None else None
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
    return result | ({"video": written} if written is not None else {})


class EpisodeVideo:
    """Films env 0's first episode of a vector env made by `make_vec_env(env_cfg, max_episode_frames)`.

    Each agent step adds the frame the agent acted on, with the running (unclipped) score drawn at the bottom
    left and, when a glimpse `location` is given, the glimpse's patches where it looked (`glimpse_boxes`); the
    screen that ends the episode closes the film. A filmed episode of T agent steps has T + 1 frames; filming
    stops after `cfg.video_max_steps` steps (the episode plays on). Frames stream to the encoder: an MP4 holds
    no frame in memory, however long the episode.

    Call `reset(obs, seed)` after the env's reset with the seed it got, `step(...)` after each env step, and
    `close()` at the end: it returns the path written (None when nothing was filmed).
    """

    def __init__(
        self,
        env,
        env_cfg: EnvConfig,
        path: Path,
        cfg: VideoConfig,
        max_episode_frames: Optional[int] = None,
        glimpse: Optional[GlimpseConfig] = None,
    ) -> None:
        self.env_cfg, self.view, self.max_steps, self.glimpse = env_cfg, cfg.video_view, cfg.video_max_steps, glimpse
        self.screen = GameScreen(env, env_cfg, max_episode_frames) if self.view == "game" else None
        self.writer = VideoWriter(path, fps=ATARI_FPS / env_cfg.frame_skip)
        self.steps, self.score = 0, 0.0
        self.filming = False
        self._frame: Optional[np.ndarray] = None  # (H, W, 3) uint8: what env 0 shows now, not yet written

    def reset(self, obs: np.ndarray, seed: int) -> None:
        """After the vector env's `reset(seed=seed)`, which returned `obs` (N, ...)."""
        if self.screen is not None:
            self.screen.reset(seed)
        self.filming = True
        self._frame = self._view(obs)

    def step(self, actions: np.ndarray, obs: np.ndarray, rewards: np.ndarray, ended: np.ndarray, location=None) -> None:
        """After an env step: the env `actions` (N,) taken, what it returned (`obs` (N, ...), `rewards` (N,),
        `ended` (N,) bool: terminated or truncated), and the glimpse `location` (2,) in [-1, 1] that env 0's
        action was chosen from, if any."""
        if not self.filming:
            return
        self._write(location)
        if self.screen is not None:
            self.screen.step(int(actions[0]))
        self.steps += 1
        self.score += float(rewards[0])
        self._frame = self._view(obs)
        if ended[0] or self.steps >= self.max_steps:
            self._write(None)
            self.filming = False
            self._stop_screen()

    def close(self) -> Optional[Path]:
        """Finish the file; the path written, or None when no frame was filmed."""
        self._stop_screen()
        self.filming = False
        if self.writer.frames == 0:
            return None
        return self.writer.close()

    def abandon(self) -> None:
        """Stop without writing anything (an evaluation that failed)."""
        self._stop_screen()
        self.filming = False
        self.writer.abandon()

    def _write(self, location) -> None:
        self.writer.append(film_frame(self._frame, self.score, location, self.glimpse, self.env_cfg.screen_size))

    def _view(self, obs: np.ndarray) -> np.ndarray:
        if self.screen is not None:
            return self.screen.rgb()
        return agent_view(obs[0])

    def _stop_screen(self) -> None:
        if self.screen is not None:
            self.screen.close()
            self.screen = None


def film_frame(
    frame: np.ndarray,
    score: float,
    location=None,
    glimpse: Optional[GlimpseConfig] = None,
    obs_size: int = 84,
) -> np.ndarray:
    """A video frame: a copy of `frame` (H, W, 3) uint8 with "score <score>" at the bottom left and, given a
    glimpse `location` (2,) and its `glimpse` sizes, the glimpse's patches outlined (`glimpse_boxes`), the finest
    on top in GLIMPSE_COLOURS[0]."""
    if location is not None and glimpse is not None:
        boxes = glimpse_boxes(location, glimpse, obs_size, frame.shape[:2])
        for box, colour in reversed(list(zip(boxes, _glimpse_colours(len(boxes))))):
            frame = draw_box(frame, box, colour)
    return draw_text(frame, f"score {score:g}", (2, frame.shape[0] - 12))


def agent_view(obs: np.ndarray) -> np.ndarray:
    """One env's observation as the network reads it -> (H, W, 3) uint8 RGB, scaled up AGENT_VIEW_SCALE times:
    a frame stack (stack, 84, 84) uint8 gives its newest frame; a Karpathy difference frame (6400,) in {-1, 0, 1}
    its 80x80 image, black where a pixel went dark, grey where nothing moved, white where one lit."""
    if obs.ndim == 3:
        image = obs[-1]
    else:
        side = math.isqrt(obs.size)
        image = np.round((obs.reshape(side, side) + 1) * 127.5).astype(np.uint8)
    image = image.repeat(AGENT_VIEW_SCALE, 0).repeat(AGENT_VIEW_SCALE, 1)
    return np.repeat(image[:, :, None], 3, axis=2)


def glimpse_boxes(
    location, glimpse: GlimpseConfig, obs_size: int, frame_shape: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """The patches of a glimpse at `location` (row, col) in [-1, 1] as (left, top, right, bottom) pixel boxes,
    both edges inclusive, on a frame of `frame_shape` (H, W), finest patch first.

    The location is in the agent's coordinates over its obs_size x obs_size view: the patch of side s spans view
    rows c - s//2 .. c - s//2 + s - 1 around c = location_to_pixel(l, obs_size) (shared.models.glimpse), likewise
    columns. The Nature pipeline resizes the whole 210x160 screen to 84x84, no crop, so view row r covers frame
    rows r H / obs_size to (r + 1) H / obs_size: a patch maps to the frame rows from floor(top H / obs_size) to
    ceil((bottom + 1) H / obs_size) - 1, the frame pixels it was averaged from. The same holds for the agent view
    (an exact 3x scale). Boxes may reach past the frame's edges, as patches do past the view's (zeros there).
    """
    height, width = frame_shape
    centre_row, centre_col = location_to_pixel(torch.as_tensor(location, dtype=torch.float32), obs_size).tolist()
    boxes = []
    for side in (glimpse.patch * 2**i for i in range(glimpse.scales)):
        top, bottom = _view_to_frame(centre_row - side // 2, side, obs_size, height)
        left, right = _view_to_frame(centre_col - side // 2, side, obs_size, width)
        boxes.append((left, top, right, bottom))
    return boxes


def _view_to_frame(first: int, side: int, obs_size: int, frame_size: int) -> tuple[int, int]:
    """View pixels first .. first + side - 1 of obs_size -> the frame pixels (first, last) of frame_size they cover."""
    return first * frame_size // obs_size, -(-(first + side) * frame_size // obs_size) - 1


def _glimpse_colours(count: int) -> list[tuple[int, int, int]]:
    return [GLIMPSE_COLOURS[min(i, len(GLIMPSE_COLOURS) - 1)] for i in range(count)]


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
