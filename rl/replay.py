"""Experience replay that stores every frame once and rebuilds stacks, n-step returns and priorities when sampling.

DQN reads a stack of the last 4 frames, and consecutive observations share 3 of them: storing (s, s') pairs
keeps each 84x84 frame 8 times (56 KB per transition, as SB3 does). Here each env writes its frames, one per
step, into its own ring (Dopamine's layout), and a transition is a slot: the stack of slot i is the frames
of slots i-3..i of the same env, its s' the stack of slot i+k. A transition costs its one frame (7,056 bytes)
plus 12 bytes of metadata and either a validity flag (1 byte, uniform replay: 7,069 bytes) or 16 bytes of
priority tree (7,084 bytes when the slot count is a power of two, at most 7,100 otherwise). Vector observations
(CartPole, Atari RAM) are frames of shape (4,) or (128,) with stack=1.

Layout, for N envs and C = capacity // N slots per env; slot (e, p) has the global id g = e * C + p:
    frames          (N, C, *frame_shape)  the newest frame of the observation seen at the slot
    action          (N, C) int32          the action taken from that observation
    reward          (N, C) float32        the reward it earned
    terminated      (N, C) bool           the step ended the episode (or only the learner's view of it, as a life
    truncated       (N, C) bool           lost does): n-step windows stop here; terminated also stops bootstrapping
    episode_start   (N, C) bool           the frame opens an episode: older frames of its stacks read as zeros
    has_transition  (N, C) bool           action, reward and flags are set and the next frame is in the next slot
    written         (N,)   int64          frames each env has ever written: the frame of env time t is at t % C
    tree            (2P,)  float64        prioritized only: sum-tree over the N*C slots (P the power of two >= N*C),
                                          leaf of g at P+g, 0 where g cannot be sampled
    valid           (N*C,) bool           uniform only: g can be sampled; with `valid_per_block`, the count of
                                          valid slots in each run of BLOCK slots (a two-level index, derived)

Stacks follow the env's own padding: a frame from before the episode start of slot i is zero, even while the
ring still holds one from the previous episode. The final observation of an episode gets a slot of its own
(no transition: the next step is the NextStep autoreset, whose action is ignored) and serves as s' of the
transition before it; the autoreset step's frame opens the next episode.

A slot can be sampled when it holds a transition, its n-step window is complete (k = n_step transitions stored,
or fewer if the episode ended at the k-th) and every frame its stack needs is still in the ring (the oldest
kept is env time written - C; s' needs only newer frames of the same episode). Prioritized replay (Schaul et al.
2016, proportional) keeps leaves p^alpha in a sum-tree and draws stratified. Uniform replay needs no tree: a draw
u in [0, valid count) picks the floor(u)-th valid slot in slot order, found through the per-block counts, which is
the slot a tree of 0/1 leaves would descend to (the same draws for a seed as when uniform replay used the tree);
marking a slot then costs one count, not log2(P) levels of parent sums (it halved the replay write's time).
Validity only changes near a ring's write head: writing env time t completes the
windows of slots t-n_step..t-1 and overwrites time t-C, which the stacks of slots t-C..t-C+stack-1 needed; those
n_step + stack slots are re-examined after every write. A slot that becomes valid gets the largest priority
seen so far, one that stops being valid gets 0.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

BLOCK = 256  # slots per count of the uniform sampler's index: B x BLOCK flags read per sample, P / BLOCK counts summed


class ReplayBatch(NamedTuple):
    obs: np.ndarray  # (B, stack, *frame_shape), oldest frame first; stack=1 keeps its axis: (B, 1, *frame_shape)
    actions: np.ndarray  # (B,) int64
    returns: np.ndarray  # (B,) float32: sum_{j<k} gamma^j r_{i+j}
    next_obs: np.ndarray  # (B, stack, *frame_shape): the stack of slot i+k
    discounts: np.ndarray  # (B,) float32: gamma^k, or 0 when the window ends in a termination (not a truncation)
    indices: np.ndarray  # (B,) int64 global slot ids, for update_priorities
    weights: np.ndarray  # (B,) float32 importance-sampling weights (N P(i))^-beta / their max; ones when uniform


class FrameReplay:
    def __init__(
        self,
        capacity: int,
        num_envs: int,
        frame_shape: tuple[int, ...] = (84, 84),
        stack: int = 4,
        n_step: int = 1,
        gamma: float = 0.99,
        prioritized: bool = False,
        alpha: float = 0.6,
        priority_eps: float = 1e-6,
        frame_dtype=np.uint8,
        seed: int = 0,
    ) -> None:
        if capacity < num_envs * (stack + n_step + 1):
            raise ValueError(
                f"capacity={capacity} < num_envs * (stack + n_step + 1) = {num_envs} * ({stack} + {n_step} + 1): "
                "each env's ring must hold a stack, an n-step window and the frame being written"
            )
        if priority_eps <= 0:
            raise ValueError(f"priority_eps={priority_eps} must be > 0: a zero priority would hide a valid transition")
        self.num_envs, self.stack, self.n_step, self.gamma = num_envs, stack, n_step, gamma
        self.prioritized = prioritized
        self.alpha = alpha if prioritized else 0.0  # uniform: p^0 = 1 for every valid slot
        self.priority_eps = priority_eps
        self.capacity_per_env = capacity // num_envs
        self.capacity = num_envs * self.capacity_per_env  # slots actually held: capacity rounded down
        slots = (num_envs, self.capacity_per_env)
        self.frames = np.zeros(slots + tuple(frame_shape), dtype=frame_dtype)
        self.action = np.zeros(slots, dtype=np.int32)
        self.reward = np.zeros(slots, dtype=np.float32)
        self.terminated = np.zeros(slots, dtype=bool)
        self.truncated = np.zeros(slots, dtype=bool)
        self.episode_start = np.zeros(slots, dtype=bool)
        self.has_transition = np.zeros(slots, dtype=bool)
        self.written = np.zeros(num_envs, dtype=np.int64)
        if prioritized:
            self.leaves = 1 << (self.capacity - 1).bit_length()  # P: node 1 is the root, node n has children 2n, 2n+1
            self.tree = np.zeros(2 * self.leaves)
        else:
            self.valid = np.zeros(self.capacity, dtype=bool)
            self.valid_per_block = np.zeros(-(-self.capacity // BLOCK), dtype=np.int64)
        self.max_priority = 1.0
        self.num_valid = 0
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.num_valid

    def _arrays(self) -> dict[str, np.ndarray]:
        names = "frames action reward terminated truncated episode_start has_transition written".split()
        names.append("tree" if self.prioritized else "valid")
        return {name: getattr(self, name) for name in names}

    @property
    def bytes_per_transition(self) -> float:
        return sum(array.nbytes for array in self._arrays().values()) / self.capacity

    # ---- writing

    def reset(self, frames: np.ndarray) -> None:
        """frames (N, *frame_shape): the newest frame of each env's first observation, stored as episode starts."""
        self._write(frames, np.ones(self.num_envs, dtype=bool))

    def step(self, actions, rewards, terminated, truncated, next_frames, autoreset) -> None:
        """One env.step of every env: all (N,) but next_frames (N, *frame_shape), the newest frame it returned.

        Where autoreset[e] (the step after one that ended the episode, under NextStep autoreset) there is no
        transition and next_frames[e] opens the next episode; elsewhere the current slot becomes a transition.
        terminated may be the learner's alone (a life lost while the game goes on): no autoreset follows, the
        stacks run on as the env's do, and n-step windows still stop there with discount 0.
        """
        if not self.written.all():
            raise RuntimeError("reset() with the first observations comes before step()")
        envs = np.arange(self.num_envs)
        now, before = (self.written - 1) % self.capacity_per_env, (self.written - 2) % self.capacity_per_env
        ended = (
            ~self.episode_start[envs, now]
            & self.has_transition[envs, before]
            & (self.terminated[envs, before] | self.truncated[envs, before])
        )
        autoreset = np.asarray(autoreset, dtype=bool)
        if (autoreset & ~ended).any():
            raise ValueError(f"autoreset={autoreset} where the previous step did not end the episode: {ended}")
        live = ~autoreset
        e, p = envs[live], now[live]
        self.action[e, p] = np.asarray(actions)[live]
        self.reward[e, p] = np.asarray(rewards)[live]
        self.terminated[e, p] = np.asarray(terminated)[live]
        self.truncated[e, p] = np.asarray(truncated)[live]
        self.has_transition[e, p] = True
        self._write(next_frames, autoreset)

    def _write(self, frames: np.ndarray, episode_start: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.shape != (self.num_envs, *self.frames.shape[2:]):
            raise ValueError(f"frames of shape {frames.shape}, expected {(self.num_envs, *self.frames.shape[2:])}")
        envs, head = np.arange(self.num_envs), self.written % self.capacity_per_env
        self.frames[envs, head] = frames
        self.episode_start[envs, head] = episode_start
        self.has_transition[envs, head] = False  # its action and reward come with the next step
        self.written += 1
        self._refresh(head)

    def _refresh(self, head: np.ndarray) -> None:
        """Re-examine the slots head-n_step .. head+stack-1 of each env, head (N,) the positions just written."""
        positions = (head[:, None] + np.arange(-self.n_step, self.stack)) % self.capacity_per_env  # (N, n + stack)
        env = np.repeat(np.arange(self.num_envs), positions.shape[1])
        slots = env * self.capacity_per_env + positions.ravel()
        valid = self._window(env, self._time(env, positions.ravel()))[0]
        old = self._leaf(slots)
        # A valid slot keeps its priority, a newly valid one gets the max, an invalid one 0.
        new = np.where(valid, np.where(old > 0, old, self.max_priority**self.alpha), 0.0)
        changed = new != old
        if changed.any():
            self.num_valid += int(np.count_nonzero(new) - np.count_nonzero(old))
            self._set_leaves(slots[changed], new[changed])

    # ---- reading

    def _time(self, env: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The env time of the frame at (env, position) (M,): the newest written there, negative if none."""
        newest = self.written[env] - 1
        return newest - (newest - position) % self.capacity_per_env

    def _stack(self, env: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slots (env, t) (M,) -> positions (M, stack) oldest first, padding (M, stack), complete (M,)."""
        times = t[:, None] + np.arange(1 - self.stack, 1)
        positions = times % self.capacity_per_env
        start = self.episode_start[env[:, None], positions]
        # A frame is padding when a later frame of the stack opens an episode. Overwritten slots (the oldest of
        # a stack) hold newer data's flags, but these only pad frames older still, which the verdict on the
        # newest overwritten frame (padding or invalid) has already settled.
        padding = np.cumsum(start[:, ::-1], axis=1)[:, ::-1] > start
        kept = times >= np.maximum(self.written[env] - self.capacity_per_env, 0)[:, None]
        return positions, padding, (padding | kept).all(axis=1)

    def _window(self, env: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Slots (env, t) (M,) -> valid (M,) bool, k (M,), returns (M,), discounts (M,) of their n-step windows."""
        times = t[:, None] + np.arange(self.n_step)  # (M, n): the transitions the window may sum
        e, p = env[:, None], times % self.capacity_per_env
        stored = (times < self.written[e]) & self.has_transition[e, p]
        ended = stored & (self.terminated[e, p] | self.truncated[e, p])
        needed = np.cumsum(ended, axis=1) - ended == 0  # up to and including the step that ends the episode
        k = needed.sum(axis=1)
        summed = needed & stored
        returns = (np.where(summed, self.reward[e, p], 0.0) * self.gamma ** np.arange(self.n_step)).sum(axis=1)
        discounts = np.where((summed & self.terminated[e, p]).any(axis=1), 0.0, self.gamma**k)
        valid = (t >= 0) & (stored | ~needed).all(axis=1) & self._stack(env, t)[2]
        return valid, k, returns, discounts

    def _observe(self, env: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The stacks of slots (env, t) (B,) -> (B, stack, *frame_shape), zeros before the episode start."""
        positions, padding, _ = self._stack(env, t)
        obs = self.frames[env[:, None], positions]
        obs[padding] = 0
        return obs

    def sample(self, batch_size: int, beta: float = 0.4) -> ReplayBatch:
        if self.num_valid == 0:
            raise ValueError("nothing to sample: no transition has its stack and n-step window stored yet")
        if self.prioritized:  # one draw in each of batch_size equal segments of the total priority
            total = self.tree[1]
            slots = self._descend((np.arange(batch_size) + self.rng.random(batch_size)) * (total / batch_size))
            weights = (self.num_valid * self.tree[self.leaves + slots] / total) ** -beta
            weights = weights / weights.max()
        else:
            slots = self._nth_valid(self.rng.random(batch_size) * self.num_valid)
            weights = np.ones(batch_size)
        env, position = np.divmod(slots, self.capacity_per_env)
        t = self._time(env, position)
        _, k, returns, discounts = self._window(env, t)
        return ReplayBatch(
            obs=self._observe(env, t),
            actions=self.action[env, position].astype(np.int64),
            returns=returns.astype(np.float32),
            next_obs=self._observe(env, t + k),
            discounts=discounts.astype(np.float32),
            indices=slots,
            weights=weights.astype(np.float32),
        )

    def _nth_valid(self, u: np.ndarray) -> np.ndarray:
        """Uniform draws u (B,) in [0, valid count) -> the floor(u)-th valid slots (B,), counted in slot order."""
        rank = np.minimum(u.astype(np.int64), self.num_valid - 1)
        before = np.cumsum(self.valid_per_block)  # (blocks,) valid slots up to each block's end
        block = np.searchsorted(before, rank, side="right")
        rank -= before[block] - self.valid_per_block[block]  # the rank within the block
        window = block[:, None] * BLOCK + np.arange(BLOCK)  # (B, BLOCK) slots; the last block may run past the end
        flags = self.valid[window.clip(max=self.capacity - 1)] & (window < self.capacity)
        return window[np.arange(len(u)), np.argmax(np.cumsum(flags, axis=1) > rank[:, None], axis=1)]

    # ---- priorities

    def _leaf(self, slots: np.ndarray) -> np.ndarray:
        """Sampling weights (M,) of slots (M,): p^alpha under PER, 1 for a valid uniform slot, 0 if invalid."""
        return self.tree[self.leaves + slots] if self.prioritized else self.valid[slots].astype(np.float64)

    def _descend(self, u: np.ndarray) -> np.ndarray:
        """Prefix sums u (B,) in [0, total] -> the slots (B,) whose leaves' cumulative range holds them."""
        node = np.ones(len(u), dtype=np.int64)
        for _ in range(self.leaves.bit_length() - 1):
            left = self.tree[2 * node]
            # Rounding can leave u at or past a node's sum: never step into an empty subtree.
            right = (u >= left) & (self.tree[2 * node + 1] > 0)
            u = np.where(right, u - left, u)
            node = 2 * node + right
        return node - self.leaves

    def _set_leaves(self, slots: np.ndarray, values: np.ndarray) -> None:
        """Set the sampling weights (M,) of distinct slots (M,), as _leaf returns them."""
        if not self.prioritized:
            np.add.at(self.valid_per_block, slots // BLOCK, (values > 0).astype(np.int64) - self.valid[slots])
            self.valid[slots] = values > 0
            return
        node = self.leaves + slots
        self.tree[node] = values
        while node[0] > 1:  # each parent recomputed from its children, not shifted by deltas that would drift
            node = np.unique(node // 2)
            self.tree[node] = self.tree[2 * node] + self.tree[2 * node + 1]

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Priorities (B,) >= 0 (|TD error|) of the slots indices (B,) that sample() returned."""
        indices, priorities = np.asarray(indices, dtype=np.int64), np.asarray(priorities, dtype=np.float64)
        if not (np.isfinite(priorities) & (priorities >= 0)).all():
            raise ValueError(f"priorities must be finite and >= 0, got {priorities}")
        if not self.prioritized:  # uniform replay draws every valid slot alike
            return
        priorities = priorities + self.priority_eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        # A slot whose stack was overwritten since it was sampled stays at 0.
        live = self.tree[self.leaves + indices] > 0
        if live.any():
            self._set_leaves(indices[live], priorities[live] ** self.alpha)

    # ---- checkpoints

    def _settings(self) -> dict:
        return {"stack": self.stack, "n_step": self.n_step, "alpha": self.alpha}

    def state_dict(self) -> dict:
        """Arrays as tensors sharing the replay's memory, plus plain numbers: loadable with weights_only=True."""
        return {name: torch.from_numpy(array) for name, array in self._arrays().items()} | {
            "settings": self._settings(),
            "max_priority": self.max_priority,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["settings"] != self._settings():
            raise ValueError(f"replay saved with {state['settings']}, this one has {self._settings()}")
        if not self.prioritized and "valid" not in state:  # saved when uniform replay kept a tree of 0/1 leaves
            tree = state["tree"].numpy()
            state = state | {"valid": torch.from_numpy(tree[len(tree) // 2 :][: self.capacity] > 0)}
        for name, array in self._arrays().items():
            saved = state[name].numpy()
            if saved.shape != array.shape or saved.dtype != array.dtype:
                raise ValueError(f"{name}: saved {saved.dtype} {saved.shape}, here {array.dtype} {array.shape}")
            array[...] = saved
        self.max_priority = float(state["max_priority"])
        if self.prioritized:
            self.num_valid = int(np.count_nonzero(self.tree[self.leaves :]))
        else:
            padded = np.zeros(len(self.valid_per_block) * BLOCK, dtype=np.int64)
            padded[: self.capacity] = self.valid
            self.valid_per_block[:] = padded.reshape(-1, BLOCK).sum(axis=1)
            self.num_valid = int(self.valid_per_block.sum())
        self.rng.bit_generator.state = state["rng"]
