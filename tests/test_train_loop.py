"""The epoch loop's bookkeeping (shared/train/loop.py): the clock's answers step by step for a known schedule,
fresh and resumed mid-epoch, and the running means' sums through a checkpoint, in the current and older forms."""

from __future__ import annotations

import pytest
import torch

from shared.train import loop
from shared.train.loop import EpochClock, RunningMeans
from shared.train.select import BestWeights

# 3 epochs of 5 steps (15 in all), a log line every 4 steps, a checkpoint every 6.
SCHEDULE = dict(steps_per_epoch=5, epochs=3, max_steps=None, log_every=4, checkpoint_every=6)


def walk(clock: EpochClock) -> list[tuple]:
    """Run `clock` to its end: per step, (epoch, batch) before it, then the answers after it."""
    seen = []
    while not clock.stop_now:
        where = (clock.epoch, clock.batch)
        clock.tick()
        seen.append((clock.step, where, clock.log_now, clock.epoch_ended, clock.checkpoint_now, clock.finished))
    return seen


def test_the_clock_answers_for_every_step_of_a_known_schedule():
    clock = EpochClock(**SCHEDULE)
    assert clock.total_steps == 15
    # step, (epoch, batch) before the step, log now, epoch ended, checkpoint now, finished
    assert walk(clock) == [
        (1, (0, 0), False, False, False, False),
        (2, (0, 1), False, False, False, False),
        (3, (0, 2), False, False, False, False),
        (4, (0, 3), True, False, False, False),
        (5, (0, 4), False, True, False, False),
        (6, (1, 0), False, False, True, False),
        (7, (1, 1), False, False, False, False),
        (8, (1, 2), True, False, False, False),
        (9, (1, 3), False, False, False, False),
        (10, (1, 4), False, True, False, False),
        (11, (2, 0), False, False, False, False),
        (12, (2, 1), True, False, True, False),
        (13, (2, 2), False, False, False, False),
        (14, (2, 3), False, False, False, False),
        (15, (2, 4), False, True, True, True),  # the last step checkpoints whatever checkpoint_every says
    ]


def test_a_clock_resumed_mid_epoch_continues_with_the_same_answers():
    fresh = walk(EpochClock(**SCHEDULE))
    resumed = EpochClock(**SCHEDULE)
    resumed.start(7)  # a checkpoint at step 7: epoch 1, its third batch next
    assert (resumed.epoch, resumed.batch) == (1, 2)
    assert walk(resumed) == fresh[7:]


def test_max_steps_cuts_the_budget_and_a_stop_checkpoints_at_once():
    clock = EpochClock(**SCHEDULE | {"max_steps": 12})
    assert clock.total_steps == 12 and walk(clock)[-1] == (12, (2, 1), True, False, True, True)
    assert EpochClock(**SCHEDULE | {"max_steps": 40}).total_steps == 15  # the epochs come first

    clock = EpochClock(**SCHEDULE)
    clock.start(2)
    clock.tick()
    assert not clock.checkpoint_now and not clock.stop_now
    clock.stopped = True  # a signal arrived
    assert clock.checkpoint_now and clock.stop_now and not clock.finished


def test_pace_reports_the_fractional_epoch_and_images_per_second_since_the_last_call(monkeypatch):
    times = iter([0.0, 100.0, 102.0, 103.0])  # construction, start, the two calls
    monkeypatch.setattr(loop.time, "perf_counter", lambda: next(times))
    clock = EpochClock(**SCHEDULE)
    clock.start(3)  # the clock reads 100 s
    for _ in range(4):
        clock.tick()
    assert clock.pace(batch_size=32) == {"train/epoch": 7 / 5, "train/images_per_s": 4 * 32 / 2.0}  # at 102 s
    clock.tick()
    assert clock.pace(batch_size=32) == {"train/epoch": 8 / 5, "train/images_per_s": 1 * 32 / 1.0}  # at 103 s


def test_running_means_by_name_and_their_state_through_a_checkpoint():
    running = RunningMeans(["loss", "kl"], torch.device("cpu"))
    running.add(loss=torch.tensor(1.0, requires_grad=True), kl=torch.tensor(0.5))
    running.add(loss=torch.tensor(2.0), kl=torch.tensor(0.25, dtype=torch.bfloat16))  # summed in fp32
    assert running.state() == {"sums": {"loss": 3.0, "kl": 0.75}, "count": 2}

    restored = RunningMeans(["loss", "kl"], torch.device("cpu"), {"step": 40} | running.state())
    for means in (running, restored):
        means.add(loss=torch.tensor(6.0), kl=torch.tensor(0.0))
        assert means.means() == {"train/loss": 3.0, "train/kl": 0.25}
        assert means.pop() == {"train/loss": 3.0, "train/kl": 0.25}
        assert means.state() == {"sums": {"loss": 0.0, "kl": 0.0}, "count": 0}


@pytest.mark.parametrize(
    "names, written, means",
    [
        (["loss"], {"loss_sum": 3.0, "loss_count": 2}, {"train/loss": 1.5}),  # classify and PixelCNN
        (
            ["loss", "kl", "recon"],
            {"sums": [6.0, 2.0, 4.0], "count": 2},
            {"train/loss": 3.0, "train/kl": 1.0, "train/recon": 2.0},
        ),  # VAE
        (["d_loss", "g_loss"], {"sums": {}, "count": 0}, None),  # RAM right after a log line
    ],
)
def test_running_means_read_the_counters_older_checkpoints_hold(names, written, means):
    running = RunningMeans(names, torch.device("cpu"), {"step": 10} | written)
    assert running.count == written.get("count", written.get("loss_count"))
    if means is None:
        assert running.sums.tolist() == [0.0] * len(names)
    else:
        assert running.means() == means


def test_best_weights_keep_the_lowest_metric_and_run_out_of_patience():
    model = torch.nn.Linear(1, 1, bias=False)
    best = BestWeights(model, patience=2)
    seen = []
    for step, metric in [(1, 0.5), (2, 0.4), (3, 0.4), (4, 0.45), (5, 0.3), (6, 0.35), (7, 0.3)]:
        model.weight.data.fill_(step)  # the weights of each step are the step's number
        seen.append((best.observe(metric, step, model), best.exhausted))
    # 0.4 again is no improvement: the first of equals is kept; two bad evaluations in a row exhaust it
    assert seen == [
        (True, False),
        (True, False),
        (False, False),
        (False, True),
        (True, False),
        (False, False),
        (False, True),
    ]
    assert (best.metric, best.step) == (0.3, 5)
    model.weight.data.fill_(-1.0)
    best.restore(model)
    assert model.weight.item() == 5.0

    resumed = BestWeights(model)
    resumed.load_state_dict(best.state_dict())
    assert (resumed.metric, resumed.step, resumed.bad_evaluations) == (0.3, 5, 2)
    assert resumed.weights["weight"].item() == 5.0 and not resumed.exhausted  # patience comes from the config
    assert BestWeights(model, patience=None).exhausted is False


def test_finish_ends_the_budget_at_the_current_step():
    clock = EpochClock(**SCHEDULE)
    for _ in range(7):
        clock.tick()
    clock.finish()
    assert clock.finished and clock.stop_now and clock.checkpoint_now and clock.total_steps == 7
