"""The bookkeeping of an epoch loop, written once for every trainer that walks a dataset in epochs.

    clock = EpochClock.from_config(cfg, steps_per_epoch=math.ceil(len(split) / batch_size))
    schedule = Schedule(optimizer, cfg.schedule, clock.total_steps)
    state = run.restore(objects) or {"step": 0}
    clock.start(state["step"])
    running = RunningMeans(["loss"], run.device, state)
    while not clock.stop_now:
        order = epoch_order(n, cfg.seed, clock.epoch, device)
        for images, labels in split.batches(batch_size, order, start=clock.batch):
            ...                                   # forward, loss, optimizer step: the trainer's own, inline
            clock.tick()
            running.add(loss=loss)
            if clock.log_now: run.log(running.pop() | clock.pace(batch_size), clock.step)
            if clock.epoch_ended: ...             # evaluation, media
            clock.stopped = run.should_stop
            if clock.checkpoint_now: run.save(clock.step, objects, running.state())
            if clock.stop_now: break

A step is one optimizer update (one batch). The clock answers where the run stands and what is due; the
running means hold the logged training terms between two log lines, and their sums and count go into every
checkpoint, so that a resumed run logs the very numbers an uninterrupted one does.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch


class EpochClock:
    """Where an epoch-structured run stands, counted in optimizer steps, and what falls due at this step.

    total_steps = epochs * steps_per_epoch, or `max_steps` when that comes first. Step s (0-based, the
    number of steps already taken) lies in epoch s // steps_per_epoch at batch s % steps_per_epoch.
    """

    def __init__(
        self, steps_per_epoch: int, epochs: int, max_steps: Optional[int], log_every: int, checkpoint_every: int
    ) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = min(epochs * steps_per_epoch, max_steps) if max_steps else epochs * steps_per_epoch
        self.log_every, self.checkpoint_every = log_every, checkpoint_every
        self.step = 0
        self.stopped = False  # set by the trainer when a signal (or any rank under DDP) asks the run to stop
        self._pace_time, self._pace_step = time.perf_counter(), 0

    @classmethod
    def from_config(cls, cfg, steps_per_epoch: int) -> "EpochClock":
        """The clock of a run config with train.epochs, train.max_steps, tracking.log_every and checkpoint.every."""
        return cls(steps_per_epoch, cfg.train.epochs, cfg.train.max_steps, cfg.tracking.log_every, cfg.checkpoint.every)

    def start(self, step: int) -> None:
        """Continue from `step` steps already taken (0 for a fresh run, the checkpoint's step on resume)."""
        self.step = step
        self._pace_time, self._pace_step = time.perf_counter(), step

    def tick(self) -> None:
        """One optimizer step was taken."""
        self.step += 1

    @property
    def epoch(self) -> int:
        """The epoch the next step belongs to (0-based)."""
        return self.step // self.steps_per_epoch

    @property
    def batch(self) -> int:
        """The next step's batch within its epoch (0-based): where a resumed epoch starts."""
        return self.step % self.steps_per_epoch

    @property
    def log_now(self) -> bool:
        return self.step % self.log_every == 0

    @property
    def epoch_ended(self) -> bool:
        """The step just taken was the last of an epoch."""
        return self.step % self.steps_per_epoch == 0

    @property
    def finished(self) -> bool:
        """The budget is spent."""
        return self.step >= self.total_steps

    def finish(self) -> None:
        """End the budget at this step (early stopping): `finished` holds from here on."""
        self.total_steps = self.step

    @property
    def checkpoint_now(self) -> bool:
        """Every `checkpoint_every` steps, at the last step, and before a stop."""
        return self.step % self.checkpoint_every == 0 or self.finished or self.stopped

    @property
    def stop_now(self) -> bool:
        """Leave the loop: the budget is spent or the run was asked to stop."""
        return self.finished or self.stopped

    def pace(self, batch_size: int) -> dict:
        """train/epoch (fractional) and train/images_per_s since the previous call (or `start`)."""
        now = time.perf_counter()
        images_per_s = (self.step - self._pace_step) * batch_size / max(now - self._pace_time, 1e-9)
        self._pace_time, self._pace_step = now, self.step
        return {"train/epoch": self.step / self.steps_per_epoch, "train/images_per_s": images_per_s}


class RunningMeans:
    """Means of named training terms (scalar tensors, summed on their device) between two log lines.

    `state()` is a checkpoint's counters, {"sums": {name: float}, "count": int}; the constructor takes the
    counters back. It also reads the forms written before this class existed: classify and PixelCNN's
    {"loss_sum", "loss_count"}, the VAE's and DCGAN's {"sums": [floats in the order of `names`], "count"}.
    """

    def __init__(self, names: Sequence[str], device: torch.device, counters: Optional[dict] = None) -> None:
        counters = counters or {}
        if "loss_sum" in counters:
            sums, count = {"loss": counters["loss_sum"]}, counters["loss_count"]
        else:
            sums, count = counters.get("sums", {}), counters.get("count", 0)
        if isinstance(sums, list):
            sums = dict(zip(names, sums))
        self.names = list(names)
        self.sums = torch.tensor([float(sums.get(name, 0.0)) for name in self.names], device=device)  # (K,) float32
        self.count = count

    def add(self, **terms: torch.Tensor) -> None:
        """Add one step's value of every named term (0-d tensors; detached here, summed in fp32)."""
        self.sums += torch.stack([terms[name].detach().float() for name in self.names])
        self.count += 1

    def means(self) -> dict[str, float]:
        """{"train/<name>": mean since the last pop}, the stable metric names (one device-to-host copy)."""
        return {f"train/{name}": mean for name, mean in zip(self.names, (self.sums / self.count).tolist())}

    def pop(self) -> dict[str, float]:
        """The means, then start afresh."""
        means = self.means()
        self.sums.zero_()
        self.count = 0
        return means

    def state(self) -> dict:
        return {"sums": dict(zip(self.names, self.sums.tolist())), "count": self.count}
