"""FrameReplay: stacks rebuilt from single frames across episode starts and ring wrap-around, checked by hand
and against what real vector envs produced; n-step returns; the priority sum-tree; memory; checkpoints."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from ale_py.vector_env import AtariVectorEnv

from rl.replay import FrameReplay

GAMMA = 0.99


# ---- a scripted pair of envs whose frames name themselves: the frame of env e at time t is filled with 10t + e + 1


def value(env: int, t: int) -> int:
    return 10 * t + env + 1


def frames_at(t: int) -> np.ndarray:  # (2, 2, 2): both envs' frames at time t
    return np.stack([np.full((2, 2), value(env, t), dtype=np.uint8) for env in (0, 1)])


# (env, t) -> how the step taken at time t ended: its next frame (t + 1) is the final observation, and the step
# after it (producing t + 2) is the autoreset step that opens the next episode.
ENDS = {(0, 4): "terminated", (0, 8): "truncated", (1, 11): "terminated"}


def script(replay: FrameReplay, steps: range) -> None:
    """Steps `steps` (step s produces time s's frames); the action at time t is t + 100 env, its reward t + env / 2."""
    if steps.start == 1:
        replay.reset(frames_at(0))
    for s in steps:
        t = s - 1
        ends = [ENDS.get((env, t)) for env in (0, 1)]
        autoreset = [ENDS.get((env, t - 1)) is not None for env in (0, 1)]
        replay.step(
            actions=[t, t + 100],
            rewards=[t, t + 0.5],
            terminated=[end == "terminated" for end in ends],
            truncated=[end == "truncated" for end in ends],
            next_frames=frames_at(s),
            autoreset=autoreset,
        )


def check_samples(replay: FrameReplay, expected: dict, draws: int = 40) -> None:
    """expected: slot -> (env, t, obs values, next_obs values); every one is drawn and nothing else is."""
    seen = set()
    for _ in range(draws):
        batch = replay.sample(32)
        for i, slot in enumerate(batch.indices.tolist()):
            env, t, obs, next_obs = expected[slot]
            assert (batch.obs[i] == np.array(obs, dtype=np.uint8)[:, None, None]).all(), (slot, batch.obs[i, :, 0, 0])
            assert (batch.next_obs[i] == np.array(next_obs, dtype=np.uint8)[:, None, None]).all(), slot
            assert batch.actions[i] == t + 100 * env and batch.returns[i] == t + env / 2
            assert batch.discounts[i] == np.float32(0.0 if ENDS.get((env, t)) == "terminated" else GAMMA)
            seen.add(slot)
        assert (batch.weights == 1).all() or replay.prioritized
    assert seen == set(expected)
    assert len(replay) == len(expected)


# Ring of 8 slots per env; slot ids: env 0 -> 0..7, env 1 -> 8..15, position = t % 8.
BEFORE_WRAP = {  # after 7 steps: times 0..7 written, nothing overwritten
    0: (0, 0, [0, 0, 0, 1], [0, 0, 1, 11]),
    1: (0, 1, [0, 0, 1, 11], [0, 1, 11, 21]),
    2: (0, 2, [0, 1, 11, 21], [1, 11, 21, 31]),
    3: (0, 3, [1, 11, 21, 31], [11, 21, 31, 41]),
    4: (0, 4, [11, 21, 31, 41], [21, 31, 41, 51]),  # terminated: s' is the final observation, slot 5
    # slot 5 holds the final observation (no transition); slot 6 opens the next episode: the ring still holds
    # times 3..5 of the previous one, but the stack reads zeros as the env's did
    6: (0, 6, [0, 0, 0, 61], [0, 0, 61, 71]),
    **{
        8 + t: (
            1,
            t,
            [value(1, u) if u >= 0 else 0 for u in range(t - 3, t + 1)],
            [value(1, u) if u >= 0 else 0 for u in range(t - 2, t + 2)],
        )
        for t in range(7)
    },
}
AFTER_WRAP = {  # after 13 steps: times 6..13 held, at positions 6, 7, 0, 1, ..., 5
    6: (0, 6, [0, 0, 0, 61], [0, 0, 61, 71]),  # padding stands where the overwritten times 3..5 were
    7: (0, 7, [0, 0, 61, 71], [0, 61, 71, 81]),
    0: (0, 8, [0, 61, 71, 81], [61, 71, 81, 91]),  # truncated: bootstraps from the final observation (slot 1)
    2: (0, 10, [0, 0, 0, 101], [0, 0, 101, 111]),  # an autoreset start: times 7..9 are the previous episode
    3: (0, 11, [0, 0, 101, 111], [0, 101, 111, 121]),
    4: (0, 12, [0, 101, 111, 121], [101, 111, 121, 131]),
    # env 1, one episode from time 0 to its end at 11: times 6..8 (slots 14, 15, 8) needed 3..5, overwritten
    9: (1, 9, [62, 72, 82, 92], [72, 82, 92, 102]),  # its stack spans the wrap: positions 6, 7, 0, 1
    10: (1, 10, [72, 82, 92, 102], [82, 92, 102, 112]),
    11: (1, 11, [82, 92, 102, 112], [92, 102, 112, 122]),  # terminated: discount 0
}


def scripted_replay(**kwargs) -> FrameReplay:
    return FrameReplay(16, 2, frame_shape=(2, 2), stack=4, gamma=GAMMA, **kwargs)


@pytest.mark.parametrize("prioritized", [False, True])
def test_hand_computed_stacks_across_episode_starts_and_the_wrap(prioritized):
    replay = scripted_replay(prioritized=prioritized)
    script(replay, range(1, 8))
    check_samples(replay, BEFORE_WRAP)
    script(replay, range(8, 14))
    check_samples(replay, AFTER_WRAP)


def test_autoreset_must_follow_an_ended_step_and_capacity_must_hold_a_window():
    replay = scripted_replay()
    replay.reset(frames_at(0))
    with pytest.raises(ValueError, match="autoreset"):
        replay.step([0, 0], [0, 0], [False, False], [False, False], frames_at(1), autoreset=[True, False])
    with pytest.raises(ValueError, match=r"capacity=11 < num_envs \* \(stack \+ n_step \+ 1\) = 2 \* \(4 \+ 1 \+ 1\)"):
        FrameReplay(11, 2)
    with pytest.raises(ValueError, match="nothing to sample"):
        replay.sample(4)


# ---- real envs: every sampled stack is the one the env produced


def record(env, replay: FrameReplay, steps: int, newest, seed: int = 0) -> tuple[dict, set]:
    """Random play feeding the replay; -> ({slot: (obs, next_obs, action, reward, terminated, truncated)} of the
    transitions the ring holds now, the slots that should be sampleable: whose stack frames are all still held)."""
    capacity, num_envs = replay.capacity_per_env, env.num_envs
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    replay.reset(newest(obs))
    t = np.zeros(num_envs, dtype=np.int64)  # each env's time: its current observation's slot is t % capacity
    start = np.zeros(num_envs, dtype=np.int64)  # when each env's episode began
    autoreset = np.zeros(num_envs, dtype=bool)
    records, oldest_needed = {}, {}
    for _ in range(steps):
        actions = rng.integers(env.single_action_space.n, size=num_envs)
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        replay.step(actions, rewards, terminated, truncated, newest(next_obs), autoreset)
        for e in range(num_envs):
            slot = e * capacity + t[e] % capacity
            if autoreset[e]:  # the env ignored the action: no transition, the new frame opens an episode
                start[e] = t[e] + 1
            else:
                records[slot] = (obs[e].copy(), next_obs[e].copy(), actions[e], rewards[e], terminated[e], truncated[e])
                oldest_needed[slot] = max(t[e] - replay.stack + 1, start[e])
            overwritten = e * capacity + (t[e] + 1) % capacity
            records.pop(overwritten, None)
            oldest_needed.pop(overwritten, None)
        t += 1
        obs, autoreset = next_obs, terminated | truncated
    valid = {slot for slot, oldest in oldest_needed.items() if oldest >= t[slot // capacity] + 1 - capacity}
    return records, valid


def compare(replay: FrameReplay, records: dict, valid: set, batches: int) -> int:
    """Samples against the recorded transitions; -> how many sampled transitions were terminal."""
    assert len(replay) == len(valid)
    terminals = 0
    for _ in range(batches):
        batch = replay.sample(100)
        for i, slot in enumerate(batch.indices.tolist()):
            assert slot in valid
            obs, next_obs, action, reward, terminated, truncated = records[slot]
            assert np.array_equal(batch.obs[i], obs.reshape(batch.obs.shape[1:])), slot
            assert np.array_equal(batch.next_obs[i], next_obs.reshape(batch.obs.shape[1:])), slot
            assert batch.actions[i] == action and batch.returns[i] == np.float32(reward)
            assert batch.discounts[i] == np.float32(0.0 if terminated else GAMMA)
            terminals += bool(terminated)
    return terminals


def test_breakout_stacks_match_the_env_across_wraps_and_life_losses():
    env = AtariVectorEnv("breakout", num_envs=2, autoreset_mode="NextStep", episodic_life=True, noop_max=30)
    replay = FrameReplay(1000, 2, gamma=GAMMA)
    try:
        records, valid = record(env, replay, 1500, newest=lambda obs: obs[:, -1])
    finally:
        env.close()
    assert len(valid) > 900  # the ring wrapped three times; only stacks reaching past its oldest frame are lost
    assert compare(replay, records, valid, batches=3) > 0


@pytest.mark.parametrize("prioritized", [False, True])
def test_cartpole_vectors_are_returned_exactly(prioritized):
    env = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    replay = FrameReplay(200, 2, (4,), stack=1, gamma=GAMMA, prioritized=prioritized, frame_dtype=np.float32)
    try:
        records, valid = record(env, replay, 400, newest=lambda obs: obs)
    finally:
        env.close()
    assert valid == set(records) and len(valid) > 180  # stack=1 needs only its own frame: every transition held
    assert compare(replay, records, valid, batches=5) > 0


# ---- n-step returns: one env, frames (1,) of value 100 + t, stack 2, reward of the step at time t is t + 1


def test_n_step_returns_and_discounts_by_hand():
    replay = FrameReplay(20, 1, frame_shape=(1,), stack=2, n_step=3, gamma=0.5, frame_dtype=np.float32)
    ends = {4: "terminated", 9: "truncated"}
    replay.reset(np.array([[100.0]]))

    def step(s: int) -> None:
        t = s - 1
        terminated, truncated = [ends.get(t) == "terminated"], [ends.get(t) == "truncated"]
        replay.step([0], [t + 1.0], terminated, truncated, np.array([[100.0 + s]]), autoreset=[t - 1 in ends])

    for s in range(1, 15):
        step(s)
    expected = {  # t: (obs, returns, discount, next_obs)
        0: ([0, 100], 1 + 0.5 * 2 + 0.25 * 3, 0.125, [102, 103]),
        1: ([100, 101], 2 + 0.5 * 3 + 0.25 * 4, 0.125, [103, 104]),
        2: ([101, 102], 3 + 0.5 * 4 + 0.25 * 5, 0.0, [104, 105]),  # terminates at the window's last step
        3: ([102, 103], 4 + 0.5 * 5, 0.0, [104, 105]),  # cut by termination: k = 2
        4: ([103, 104], 5, 0.0, [104, 105]),
        6: ([0, 106], 7 + 0.5 * 8 + 0.25 * 9, 0.125, [108, 109]),  # time 5 is the final observation: no transition
        7: ([106, 107], 8 + 0.5 * 9 + 0.25 * 10, 0.125, [109, 110]),  # truncated at its last step: still bootstraps
        8: ([107, 108], 9 + 0.5 * 10, 0.25, [109, 110]),  # cut by truncation: gamma^2, not 0
        9: ([108, 109], 10, 0.5, [109, 110]),
        11: ([0, 111], 12 + 0.5 * 13 + 0.25 * 14, 0.125, [113, 114]),  # 12 and 13 wait for their windows
    }

    def check() -> None:
        seen = set()
        for _ in range(30):
            batch = replay.sample(16)
            for i, t in enumerate(batch.indices.tolist()):
                obs, returns, discount, next_obs = expected[t]
                assert batch.obs[i].ravel().tolist() == obs and batch.next_obs[i].ravel().tolist() == next_obs, t
                assert batch.returns[i] == returns and batch.discounts[i] == discount, t
                seen.add(t)
        assert seen == set(expected) and len(replay) == len(expected)

    check()
    step(15)
    expected[12] = ([111, 112], 13 + 0.5 * 14 + 0.25 * 15, 0.125, [114, 115])
    check()


def test_a_learner_terminal_without_reset_cuts_windows_but_not_stacks():
    """Terminal on life loss: the learner's episode ends, the game (and its frame stack) goes on."""
    replay = FrameReplay(20, 1, frame_shape=(1,), stack=2, n_step=3, gamma=0.5, frame_dtype=np.float32)
    replay.reset(np.array([[100.0]]))
    for s in range(1, 7):
        replay.step([0], [1.0], [s == 3], [False], np.array([[100.0 + s]]), autoreset=[False])
    expected = {  # t: (obs, returns, discount, next_obs); the terminal step is at time 2
        0: ([0, 100], 1.75, 0.0, [102, 103]),
        1: ([100, 101], 1.5, 0.0, [102, 103]),
        2: ([101, 102], 1.0, 0.0, [102, 103]),
        3: ([102, 103], 1.75, 0.125, [105, 106]),  # a transition of its own, its stack runs on unpadded
    }
    seen = set()
    for _ in range(20):
        batch = replay.sample(8)
        for i, t in enumerate(batch.indices.tolist()):
            obs, returns, discount, next_obs = expected[t]
            assert batch.obs[i].ravel().tolist() == obs and batch.next_obs[i].ravel().tolist() == next_obs, t
            assert batch.returns[i] == returns and batch.discounts[i] == discount, t
            seen.add(t)
    assert seen == set(expected)


# ---- prioritized replay


def filled(prioritized: bool, steps: int = 40, capacity: int = 64, **kwargs) -> FrameReplay:
    """2 envs of vector frames, 32 slots each, no episode end: after 40 steps each env holds 31 transitions."""
    replay = FrameReplay(
        capacity, 2, frame_shape=(1,), stack=1, prioritized=prioritized, frame_dtype=np.float32, **kwargs
    )
    replay.reset(np.zeros((2, 1)))
    for s in range(1, steps + 1):
        replay.step([0, 1], [1.0, 2.0], [False, False], [False, False], np.full((2, 1), s), [False, False])
    return replay


def test_sum_tree_sums_after_updates():
    replay = filled(prioritized=True)
    assert len(replay) == 62
    rng = np.random.default_rng(1)
    for _ in range(20):
        batch = replay.sample(16)
        replay.update_priorities(batch.indices, rng.exponential(size=16))
    tree, leaves = replay.tree, replay.tree[replay.leaves :]
    internal = np.arange(1, replay.leaves)
    assert np.array_equal(tree[internal], tree[2 * internal] + tree[2 * internal + 1])
    assert tree[1] == pytest.approx(leaves.sum(), rel=1e-12)
    assert np.count_nonzero(leaves) == 62


@pytest.mark.parametrize("prioritized", [False, True])
def test_sampling_frequencies_follow_priorities(prioritized):
    replay = filled(prioritized, steps=7, alpha=0.7)  # transitions at times 0..6 of each env: 14 slots
    slots = np.array([e * 32 + t for e in (0, 1) for t in range(7)])
    priorities = np.arange(1.0, 15.0)
    replay.update_priorities(slots, priorities)
    counts = np.zeros(64)
    draws = 0
    for _ in range(400):
        indices = replay.sample(250).indices
        np.add.at(counts, indices, 1)
        draws += len(indices)
    weight = (priorities + 1e-6) ** 0.7 if prioritized else np.ones(14)  # uniform replay ignores priorities
    p = weight / weight.sum()
    assert counts.sum() == counts[slots].sum()  # never a slot without a transition
    assert np.abs(counts[slots] / draws - p).max() < 4 * np.sqrt(p * (1 - p) / draws).max()


def test_descent_at_the_ends_of_the_total_lands_on_valid_slots():
    replay = filled(True, steps=7)  # slots 0..6 and 32..38 valid; the tree's right half beyond 38 is empty
    replay.update_priorities(np.array([38]), np.array([0.5]))
    slots = replay._descend(np.array([0.0, replay.tree[1], np.nextafter(replay.tree[1], np.inf)]))
    assert slots.tolist() == [0, 38, 38]


def test_importance_weights_follow_the_formula():
    replay = filled(True, steps=7, alpha=0.6)
    slots = np.array([e * 32 + t for e in (0, 1) for t in range(7)])
    priorities = np.linspace(0.1, 3.0, 14)
    replay.update_priorities(slots, priorities)
    p = (priorities + 1e-6) ** 0.6
    probability = dict(zip(slots.tolist(), p / p.sum()))
    batch = replay.sample(64, beta=0.5)
    w = (14 * np.array([probability[i] for i in batch.indices.tolist()])) ** -0.5
    np.testing.assert_allclose(batch.weights, w / w.max(), rtol=1e-6)
    assert batch.weights.max() == 1


def test_slots_that_stop_being_valid_lose_their_priority():
    replay = scripted_replay(prioritized=True)
    script(replay, range(1, 14))
    replay.update_priorities(np.array([9, 1]), np.array([1000.0, 1000.0]))  # 1 holds a final observation: ignored
    assert replay.tree[replay.leaves + 1] == 0 and replay.tree[replay.leaves + 9] == pytest.approx(1000**0.6)
    assert 9 in replay.sample(32).indices
    # Time 14 overwrites time 6 in both rings: env 1's slot 9 (time 9) needed it, and so did env 0's times 6..8
    # (slots 6, 7, 0); both envs' time 13 (slots 5 and 13) became transitions.
    script(replay, range(14, 15))
    valid = {2, 3, 4, 5, 10, 11, 13}
    assert set(np.flatnonzero(replay.tree[replay.leaves :]).tolist()) == valid and len(replay) == len(valid)
    assert replay.tree[1] == pytest.approx(replay.tree[replay.leaves :].sum())
    for _ in range(20):
        assert set(replay.sample(32).indices.tolist()) <= valid


# ---- memory and checkpoints


def test_bytes_per_transition_at_84x84():
    # frame 7,056 + action 4 + reward 4 + four flags, plus each env's write counter; then uniform replay's validity
    # flag (its per-block counts are derived, not held), or prioritized replay's tree of 2 * 8 bytes per slot
    for prioritized, exact in ((False, 7069.0078125), (True, 7084.0078125)):
        replay = FrameReplay(4096, 4, prioritized=prioritized)
        print(f"FrameReplay: {replay.bytes_per_transition} bytes per 84x84 transition")
        assert (
            replay.bytes_per_transition
            == exact
            == 84 * 84 + 4 + 4 + 4 * 1 + (2 * 8 if prioritized else 1) + 4 * 8 / 4096
        )
        assert replay.bytes_per_transition <= 7200
    assert not hasattr(FrameReplay(4096, 4), "tree")  # uniform replay does no sum-tree work


def test_uniform_draws_pick_the_floor_u_th_valid_slot_across_blocks():
    """The draw a sum-tree of 0/1 leaves would make, through the per-block counts, with a short last block."""
    replay = filled(False, steps=700, capacity=1200)  # 600 slots per env: 3 blocks of 256 and a short one each side
    valid = np.flatnonzero(replay.valid)
    assert len(valid) == len(replay) == 2 * 599 and replay.valid_per_block.sum() == len(valid)
    u = np.array([0.0, 0.999, 255.5, 256.0, 597.2, 598.9, 599.0, 1000.4, len(valid) - 1e-9])
    assert replay._nth_valid(u).tolist() == valid[u.astype(int)].tolist()


def test_a_uniform_replay_saved_with_a_tree_loads():
    """Checkpoints from before uniform replay dropped its tree: the leaves say which slots are valid."""
    replay = scripted_replay(seed=5)
    script(replay, range(1, 14))
    state = replay.state_dict()
    leaves = 1 << (replay.capacity - 1).bit_length()
    tree = np.zeros(2 * leaves)
    tree[leaves + np.flatnonzero(replay.valid)] = 1.0
    state = {k: v for k, v in state.items() if k != "valid"} | {"tree": torch.from_numpy(tree)}
    restored = scripted_replay(seed=5)
    restored.load_state_dict(state)
    assert len(restored) == len(replay) == len(AFTER_WRAP)
    for a, b in zip(replay.sample(16), restored.sample(16)):
        assert np.array_equal(a, b)


def test_state_dict_round_trip_through_torch_load(tmp_path):
    kwargs = dict(prioritized=True, n_step=3)
    replay = scripted_replay(**kwargs, seed=5)
    script(replay, range(1, 14))
    batch = replay.sample(8)
    replay.update_priorities(batch.indices, np.arange(8.0))
    torch.save(replay.state_dict(), tmp_path / "replay.pt")
    restored = scripted_replay(**kwargs, seed=123)
    restored.load_state_dict(torch.load(tmp_path / "replay.pt", weights_only=True))
    assert len(restored) == len(replay) and restored.max_priority == replay.max_priority
    for phase in range(2):
        for a, b in zip(replay.sample(16, beta=0.7), restored.sample(16, beta=0.7)):
            assert np.array_equal(a, b)
        script(replay, range(14, 16))
        script(restored, range(14, 16))
    with pytest.raises(ValueError, match="n_step"):
        scripted_replay(prioritized=True).load_state_dict(replay.state_dict())
