"""Evaluation videos: the twin emulator plays env 0's game, a filmed episode has the frames, size and score it
should, filming changes no score, and the glimpse is drawn where the agent looked."""

from __future__ import annotations

import numpy as np
import pytest

from rl.dqn import DQNConfig
from rl.envs import EnvConfig, GameScreen, _ale_vector_env, make_vec_env
from rl.evaluate import GLIMPSE_COLOURS, EvalConfig, evaluate_policy, film_frame, glimpse_boxes
from shared.errors import ConfigError
from shared.media import read_video
from shared.models.glimpse import GlimpseConfig

# 50 agent steps of Pong per episode (200 frames at frame skip 4): short, and long enough to see the ball move
PONG = EnvConfig(id="ALE/Pong-v5")
SHORT = dict(episodes=2, num_envs=2, max_episode_frames=200)


def test_the_twin_emulator_plays_env_0s_game_frame_for_frame():
    """GameScreen's twin shares the settings that decide the game; given env 0's seed and actions its screen is
    env 0's. Checked on the agent's own 84x84 image (the twin made with those image settings), no-ops and sticky
    actions on: random elements that a twin out of step would show at once."""
    cfg = EnvConfig(id="ALE/Breakout-v5", num_envs=2, sticky_actions=0.25)
    env = make_vec_env(cfg)
    twin = _ale_vector_env(cfg, 1, None, maxpool=True, img_height=84, img_width=84, grayscale=True, stack_num=4)
    obs, _ = env.reset(seed=7)
    assert (twin.reset(seed=7)[0][0] == obs[0]).all()
    actions = np.random.default_rng(0).integers(0, 4, (30, 2))
    for a in actions:
        obs, *_ = env.step(a)
        assert (twin.step(a[:1])[0][0] == obs[0]).all()
    assert obs[0].std() > 0  # a picture, not a blank
    env.close()
    twin.close()


def _constant(action: int):
    return lambda obs, epsilon: np.full(len(obs), action)


def test_a_filmed_evaluation_shows_the_colour_screen_a_frame_per_step_with_the_score_and_the_same_scores(tmp_path):
    cfg = EvalConfig(**SHORT, video_max_steps=30)
    filmed = evaluate_policy(_constant(2), PONG, cfg, seed=3, video_path=tmp_path / "clip")
    video = read_video(filmed.pop("video"))
    assert filmed == evaluate_policy(_constant(2), PONG, cfg, seed=3)  # filming changes no score
    assert video.shape == (31, 210, 160, 3)  # 30 steps filmed, then the screen after the last one
    screen = GameScreen(None, PONG)
    screen.reset(3)  # the screen env 0 showed after its reset, before the first step
    raw = screen.rgb().astype(int)
    screen.close()
    text = (slice(210 - 16, 210), slice(0, 48))  # where "score 0" is drawn in 6x11 characters on a black box
    difference = np.abs(video[0].astype(int) - raw)
    assert difference[text].mean() > 40
    difference[text] = 0
    assert difference.mean() < 2 and len(np.unique(raw.reshape(-1, 3), axis=0)) > 3  # lossy coding at most; colour
    assert (film_frame(raw.astype(np.uint8), 0)[text] == 255).all(2).sum() > 20  # the white letters of the text


def test_the_agent_view_films_the_whole_episode_at_3x_the_networks_input(tmp_path):
    cfg = EvalConfig(**SHORT, video_view="agent")  # video_max_steps (4500) past the episode's 50 steps
    video = read_video(evaluate_policy(_constant(2), PONG, cfg, seed=3, video_path=tmp_path / "clip")["video"])
    assert video.shape == (51, 252, 252, 3)  # the whole episode, cut by the 200-frame cap: 50 steps and the last
    assert (video[..., 0] == video[..., 2]).all()  # grey, as the network sees it


def test_glimpse_boxes_map_the_agents_84x84_view_onto_the_210x160_screen():
    glimpse = GlimpseConfig(patch=12, scales=2)
    # the centre (0, 0) -> view pixel 42; the 12-pixel patch spans view rows and columns 36..47, which cover
    # frame rows 36 * 2.5 = 90 .. 48 * 2.5 - 1 = 119 and columns floor(36 * 160 / 84) = 68 .. ceil(48 * 160 / 84) - 1
    # = 91; the 24-pixel patch spans view 30..53: rows 75..134, columns 57..102
    assert glimpse_boxes((0.0, 0.0), glimpse, 84, (210, 160)) == [(68, 90, 91, 119), (57, 75, 102, 134)]
    # on the agent view, 3x: exact multiples; a glimpse at the top-left corner reaches past the edge
    assert glimpse_boxes((-1.0, -1.0), glimpse, 84, (252, 252)) == [(-18, -18, 17, 17), (-36, -36, 35, 35)]


def test_the_glimpse_is_outlined_where_it_looked_finest_on_top():
    frame = film_frame(np.zeros((210, 160, 3), np.uint8), 3, (0.0, 0.0), GlimpseConfig(patch=12, scales=2), 84)
    finest = (frame == GLIMPSE_COLOURS[0]).all(2)
    expected = np.zeros((210, 160), bool)
    expected[90, 68:92] = expected[119, 68:92] = expected[90:120, 68] = expected[90:120, 91] = True
    assert (finest == expected).all()
    coarser = (frame == GLIMPSE_COLOURS[1]).all(2)
    assert coarser[75, 57:103].all() and coarser[134, 57:103].all() and coarser.sum() == 2 * 46 + 2 * 58


def test_the_agent_view_of_ram_observations_is_refused():
    with pytest.raises(ConfigError, match="eval.video_view"):
        DQNConfig(env=EnvConfig(id="ALE/Breakout-v5", obs_type="ram"), eval=EvalConfig(video_view="agent"))
    DQNConfig(env=EnvConfig(id="ALE/Breakout-v5", obs_type="ram"), eval=EvalConfig(video_view="game"))
