"""Environments for the RL trainers: the Nature DQN Atari pipeline, vectorized in C++ by ale-py, or any
gymnasium id (CartPole for tests), behind one vector-env interface with next-step autoreset.

Atari pixels (Mnih et al. 2015, Methods, "Preprocessing" and "Evaluation procedure"):
    up to 30 no-op actions at the start of each episode; FIRE at reset for games that need it;
    each action repeated 4 frames, the observation the max of the last two (flicker);
    84x84 greyscale; the last 4 of those stacked -> (N, 4, 84, 84) uint8, zero-padded at episode start.
Two choices are training-only and live in `TrainingSignal`, not in the env, so that the env always
reports the true game score: rewards clipped to [-1, 1], and a lost life counted as terminal for the
TD target (the game goes on; only the target stops bootstrapping).

Sticky actions: `sticky_actions: 0.0` is the NoFrameskip-v4 behaviour the Nature paper used; 0.25 is
the ALE v5 default (Machado et al. 2018). Scores differ between the two: meta.json records the config.

`obs_type: ram` gives the 128-byte RAM instead of pixels (gymnasium's ALE env with its own frame skip;
no no-op starts), for agents that read the console's memory.

`preprocess: karpathy` is the pipeline of Karpathy's "Pong from pixels" (2016) instead of Nature's: the
full 210x160 grey frame cropped to the playing field (rows 35-194), every second row and column kept
(80x80), each pixel 1 where it is not the background and 0 where it is, and the observation the current
such frame minus the previous one, flattened: (N, 6400) float32 in {-1, 0, 1}. At an episode's first
step there is no previous frame and the difference is all zeros, as in his code. Pong only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import gymnasium as gym
import numpy as np

from shared.config import did_you_mean, require
from shared.errors import ConfigError


@dataclass
class EnvConfig:
    id: str = "ALE/Pong-v5"  # any gymnasium id; ALE/<Game>-v5 ids use the Atari pipeline below
    num_envs: int = 1
    obs_type: Literal["pixels", "ram"] = "pixels"
    frame_skip: int = 4
    frame_stack: int = 4
    screen_size: int = 84
    noop_max: int = 30  # Nature: "up to 30 no-op actions" at the start of an episode
    sticky_actions: float = 0.0  # repeat_action_probability: 0.0 NoFrameskip-v4 (Nature), 0.25 ALE v5 default
    max_episode_frames: int = 108_000  # 30 minutes at 60 frames/s
    terminal_on_life_loss: bool = True  # training only
    clip_rewards: bool = True  # training only
    full_action_space: bool = False
    preprocess: Literal["nature", "karpathy"] = "nature"  # pixels only


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def check_env(cfg: EnvConfig) -> None:
    """The env checks a config runs before its run folder is made: `env.id` is registered with gymnasium
    (ALE/<Game>-v5 ids by ale-py), with a did-you-mean from the registry, and `obs_type: ram` is Atari's."""
    if is_atari(cfg.id):
        import ale_py

        gym.register_envs(ale_py)
    if cfg.id not in gym.registry:
        raise ConfigError(
            f"env.id={cfg.id!r} is not a registered gymnasium env{did_you_mean(cfg.id, list(gym.registry))}; "
            "Atari games are ALE/<Game>-v5 (e.g. ALE/Pong-v5), others gymnasium ids such as CartPole-v1",
            key="env.id",
        )
    ram_ok = cfg.obs_type == "pixels" or is_atari(cfg.id)
    require(ram_ok, "env.obs_type", f"'ram' needs an Atari env (ALE/<Game>-v5), not {cfg.id}", cfg.obs_type)


def atari_game(env_id: str) -> str:
    """'ALE/SpaceInvaders-v5' -> 'space_invaders', the ROM name ale-py uses."""
    name = env_id.split("/", 1)[1].rsplit("-", 1)[0]
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def make_vec_env(cfg: EnvConfig, max_episode_frames: Optional[int] = None) -> gym.vector.VectorEnv:
    """N environments stepping together; observations (N, *obs_shape); autoreset on the step after an end."""
    if is_atari(cfg.id) and cfg.obs_type == "pixels" and cfg.preprocess == "karpathy":
        frames = _ale_vector_env(
            cfg,
            cfg.num_envs,
            max_episode_frames,
            img_height=210,
            img_width=160,
            grayscale=True,
            stack_num=2,  # the previous frame and this one
        )
        return DifferenceFrames(frames)
    if is_atari(cfg.id) and cfg.obs_type == "pixels":
        return _ale_vector_env(
            cfg,
            cfg.num_envs,
            max_episode_frames,
            maxpool=True,
            img_height=cfg.screen_size,
            img_width=cfg.screen_size,
            grayscale=True,
            stack_num=cfg.frame_stack,
        )
    if is_atari(cfg.id):
        import ale_py

        gym.register_envs(ale_py)
        return gym.make_vec(
            cfg.id,
            num_envs=cfg.num_envs,
            vectorization_mode="sync",
            obs_type="ram",
            frameskip=cfg.frame_skip,
            repeat_action_probability=cfg.sticky_actions,
            full_action_space=cfg.full_action_space,
            max_num_frames_per_episode=max_episode_frames or cfg.max_episode_frames,
        )
    return gym.make_vec(cfg.id, num_envs=cfg.num_envs, vectorization_mode="sync")


def _ale_vector_env(cfg: EnvConfig, num_envs: int, max_episode_frames: Optional[int], **image):
    """ale-py's vector env with the settings that decide the game (ROM, no-ops, fire reset, frame skip, sticky
    actions, episode cap) taken from `cfg`, and in `image` those that decide only the observation it returns."""
    from ale_py.vector_env import AtariVectorEnv

    return AtariVectorEnv(
        atari_game(cfg.id),
        num_envs,
        repeat_action_probability=cfg.sticky_actions,
        full_action_space=cfg.full_action_space,
        frameskip=cfg.frame_skip,
        noop_max=cfg.noop_max,
        max_num_frames_per_episode=max_episode_frames or cfg.max_episode_frames,
        episodic_life=False,  # life loss is a training signal (TrainingSignal), not a reset
        reward_clipping=False,  # likewise: the env reports the game score
        use_fire_reset=True,
        autoreset_mode="NextStep",
        **image,
    )


class GameScreen:
    """The full-colour screen, (210, 160, 3) uint8, of environment 0 of `make_vec_env(cfg, max_episode_frames)`
    as it plays, for videos: what a person playing sees, the last emulator frame of each agent step.

    ale-py's vector env keeps its emulators to itself, so for pixel pipelines a twin emulator plays along: reset
    with the seed env 0 got and stepped with env 0's actions, it plays the same game frame for frame, since ALE is
    deterministic given ROM, seed and actions, and the twin shares every setting that decides the game
    (`_ale_vector_env`); only the image it returns differs. RAM pipelines are gymnasium's own envs, whose emulator
    is read directly (`env` is read for those only). Call `reset(seed)` after the vector env's reset and
    `step(action)` after each of its steps with the action env 0 took, until env 0's episode ends.
    """

    def __init__(self, env: gym.vector.VectorEnv, cfg: EnvConfig, max_episode_frames: Optional[int] = None) -> None:
        if not is_atari(cfg.id):
            raise ValueError(f"{cfg.id} is not an Atari game: it has no emulator screen")
        self._twin = None
        self._screen: Optional[np.ndarray] = None
        if cfg.obs_type == "pixels":
            self._twin = _ale_vector_env(
                cfg, 1, max_episode_frames, img_height=210, img_width=160, grayscale=False, stack_num=1, maxpool=False
            )
        else:
            self._ale = env.envs[0].unwrapped.ale

    def reset(self, seed: int) -> None:
        if self._twin is not None:
            self._screen = self._twin.reset(seed=seed)[0][0, -1]

    def step(self, action: int) -> None:
        if self._twin is not None:
            self._screen = self._twin.step(np.array([action]))[0][0, -1]

    def rgb(self) -> np.ndarray:
        """The screen now: (210, 160, 3) uint8."""
        return self._ale.getScreenRGB() if self._twin is None else self._screen

    def close(self) -> None:
        if self._twin is not None:
            self._twin.close()


class DifferenceFrames(gym.vector.VectorObservationWrapper):
    """(N, 2, 210, 160) uint8 grey frame pairs -> (N, 6400) float32: Karpathy's Pong difference frames."""

    BACKGROUND = 87  # the grey level of Pong's playing field in ale-py's greyscale palette

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        self.single_observation_space = gym.spaces.Box(-1.0, 1.0, (6400,), np.float32)
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (env.num_envs, 6400), np.float32)

    def observations(self, observations: np.ndarray) -> np.ndarray:
        field = observations[:, :, 35:195:2, ::2]  # (N, 2, 80, 80)
        ink = (field != self.BACKGROUND).astype(np.float32)
        first = ~observations[:, 0].any(axis=(1, 2))  # the stack's zero padding: no previous frame yet
        diff = ink[:, 1] - ink[:, 0]
        diff[first] = 0.0
        return diff.reshape(len(diff), -1)


class TrainingSignal:
    """Turns what the env returns into what the learner sees, and keeps the true episode scores.

    Per step: rewards clipped to [-1, 1] (if asked), terminal = game over or (if asked) a life lost,
    and `autoreset`: which envs' step was the next-step autoreset (no transition to learn from).
    Finished episodes' unclipped scores and lengths accumulate in `finished` until read.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int) -> None:
        self.clip = cfg.clip_rewards
        self.life_loss = cfg.terminal_on_life_loss
        self.lives: Optional[np.ndarray] = None
        self.score = np.zeros(num_envs)
        self.length = np.zeros(num_envs, dtype=np.int64)
        self.ended = np.zeros(num_envs, dtype=bool)  # the previous step ended the episode: this one resets
        self.finished: list[tuple[int, float, int]] = []  # (env, score, length)

    def reset(self, info: dict) -> None:
        self.lives = np.asarray(info["lives"]).copy() if "lives" in info else None

    def step(self, rewards, terminated, truncated, info) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (learner rewards, learner terminals, autoreset mask) for this step."""
        autoreset = self.ended.copy()
        rewards = np.asarray(rewards, dtype=np.float32)
        terminal = np.asarray(terminated, dtype=bool).copy()
        if self.lives is not None:
            lives = np.asarray(info["lives"])
            if self.life_loss:
                terminal |= (lives < self.lives) & ~autoreset
            self.lives = lives.copy()
        live = ~autoreset
        self.score[live] += rewards[live]
        self.length[live] += 1
        self.ended = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        for e in np.flatnonzero(self.ended & live):
            self.finished.append((int(e), float(self.score[e]), int(self.length[e])))
        self.score[self.ended] = 0.0
        self.length[self.ended] = 0
        learner_rewards = np.sign(rewards) if self.clip else rewards
        return learner_rewards.astype(np.float32), terminal, autoreset

    def pop_finished(self) -> list[tuple[int, float, int]]:
        finished, self.finished = self.finished, []
        return finished
