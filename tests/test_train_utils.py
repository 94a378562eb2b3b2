"""Training utilities: optimizers and their weight-decay groups, the schedule, mixed precision, device selection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from shared.errors import ConfigError
from shared.train.accel import AccelConfig, Accelerator, resolve_precision, unwrap
from shared.train.device import select_device
from shared.train.optim import OptimConfig, Schedule, ScheduleConfig, make_optimizer


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    "name, cls",
    [
        ("sgd", torch.optim.SGD),
        ("adagrad", torch.optim.Adagrad),
        ("rmsprop", torch.optim.RMSprop),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_every_course_optimizer_with_no_decay_on_biases_and_norms(name, cls):
    model = net()
    optimizer = make_optimizer(model.parameters(), OptimConfig(name=name, lr=0.1, weight_decay=0.01))
    assert type(optimizer) is cls
    decay, no_decay = optimizer.param_groups
    assert [tuple(p.shape) for p in decay["params"]] == [(2, 1, 3, 3), (3, 8)] and decay["weight_decay"] == 0.01
    assert [tuple(p.shape) for p in no_decay["params"]] == [(2,), (2,), (2,), (3,)] and no_decay["weight_decay"] == 0.0


def test_sgd_nesterov_matches_the_update_rule():
    w = nn.Parameter(torch.tensor([1.0]))
    optimizer = make_optimizer([w], OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True))
    for _ in range(2):
        optimizer.zero_grad()
        (w**2 / 2).sum().backward()  # gradient = w
        optimizer.step()
    # Step 1: g=1, v=1, w = 1 - 0.1 (1 + 0.9) = 0.81. Step 2: g=0.81, v=0.9+0.81=1.71, w = 0.81 - 0.1 (0.81 + 0.9*1.71).
    assert w.item() == pytest.approx(0.81 - 0.1 * (0.81 + 0.9 * 1.71))


def test_frozen_parameters_are_left_out():
    model = net()
    model[0].weight.requires_grad_(False)
    optimizer = make_optimizer(model.parameters(), OptimConfig())
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == 2 + 2 + 2 + 24 + 3


def lrs(cfg: ScheduleConfig, steps: int, total: int) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule, seen = Schedule(optimizer, cfg, total), []
    for _ in range(steps):
        seen.append(schedule.lr)
        schedule.step()
    return seen


def test_warmup_then_step_decay():
    got = lrs(ScheduleConfig(name="step", warmup_steps=4, milestones=[6, 8], gamma=0.1), 10, 10)
    assert got == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_reaches_zero_at_the_last_step():
    got = lrs(ScheduleConfig(name="cosine"), 5, 4)
    assert got == pytest.approx([1, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5, 0.5 - 0.5 * math.cos(math.pi / 4), 0])


def test_plateau_drops_after_patience_and_round_trips_its_state():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = Schedule(optimizer, ScheduleConfig(name="plateau", patience=1, gamma=0.5), 100)
    for metric in (1.0, 0.9, 0.95, 0.92):  # two evaluations without beating 0.9: drop
        schedule.observe(metric)
    assert schedule.lr == 0.5
    copy = Schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), ScheduleConfig(name="plateau"), 100)
    copy.load_state_dict(schedule.state_dict())
    assert copy.lr == 0.5 and copy.best == 0.9


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [
        (True, False, "bf16"),
        (False, True, "bf16"),
        (False, False, "fp32"),
        (None, None, "fp32"),
    ],  # None: torch lacks the probe
)
def test_auto_precision_on_cpu_is_bf16_where_torch_reports_bf16_matrix_units(monkeypatch, amx, avx512_bf16, expected):
    for probe, has in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
        if has is None:
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda has=has: has)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert Accelerator(AccelConfig(), torch.device("cpu")).dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit setting is kept


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == "bf16"
    assert select_device("cpu") == cpu
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda' but this torch"):
            select_device("cuda")


def test_bf16_autocast_on_cpu_trains_and_keeps_fp32_weights():
    model = net()
    accel = Accelerator(AccelConfig(precision="bf16"), torch.device("cpu"))
    optimizer = make_optimizer(model.parameters(), OptimConfig(lr=0.01))
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 0])
    before = model[3].weight.clone()
    with accel.autocast():
        logits = model(x)
        assert logits.dtype == torch.bfloat16
        loss = nn.functional.cross_entropy(logits.float(), y)
    accel.backward_step(loss, optimizer, model.parameters(), grad_clip=1.0)
    assert model[3].weight.dtype == torch.float32 and not torch.equal(model[3].weight, before)


def test_fp16_uses_a_grad_scaler_whose_state_is_saved():
    accel = Accelerator(AccelConfig(precision="fp16"), torch.device("cpu"))
    w = nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w], lr=0.5)
    # Scaled by the initial 2^16, this loss's gradient (1e35) overflows fp32: the step is skipped, the scale halved.
    accel.backward_step((w * 1e35).sum(), optimizer, [w])
    assert w.tolist() == [1.0, 1.0] and accel.state_dict()["scaler"]["scale"] == 2.0**15
    # A finite gradient (1, scaled by 2^15 and unscaled exactly) is stepped: 1 - 0.5; one good step toward growth.
    accel.backward_step(w.sum(), optimizer, [w])
    assert w.tolist() == [0.5, 0.5]
    state = accel.state_dict()
    assert (state["scaler"]["scale"], state["scaler"]["_growth_tracker"]) == (2.0**15, 1)
    resumed = Accelerator(AccelConfig(precision="fp16"), torch.device("cpu"))
    resumed.load_state_dict(state)  # a resume goes on from the halved scale, not from 2^16
    assert resumed.state_dict() == state
    assert Accelerator(AccelConfig(precision="bf16"), torch.device("cpu")).state_dict() == {"scaler": {}}


def test_fp16_steps_accumulate_scaled_gradients_and_update_the_scale_once_for_two_optimizers():
    a, b = nn.Parameter(torch.tensor([1.0])), nn.Parameter(torch.tensor([2.0]))
    opt_a, opt_b = torch.optim.SGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    accel = Accelerator(AccelConfig(precision="fp16"), torch.device("cpu"))
    accel.backward(3 * a.sum())
    accel.backward(4 * a.sum())  # gradients add up, each scaled by the initial 2^16
    assert a.grad.item() == 7 * 65536.0
    accel.unscale(opt_a)
    assert a.grad.item() == 7.0
    accel.step(opt_a, update_scale=False)  # a discriminator's step: the scale waits for the generator's
    accel.backward_step((b * b).sum(), opt_b, [b], grad_clip=1.0)  # gradient 4, clipped to 1
    assert a.item() == pytest.approx(1 - 0.1 * 7) and b.item() == pytest.approx(2 - 0.1 * 1)
    assert accel.state_dict()["scaler"]["_growth_tracker"] == 1  # one scale update in the training step


def test_channels_last_and_unwrap():
    model = net()
    accel = Accelerator(AccelConfig(channels_last=True), torch.device("cpu"))
    prepared = accel.prepare(model)
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert accel.to_input(torch.randn(2, 1, 4, 4)).is_contiguous(memory_format=torch.channels_last)
    assert unwrap(prepared) is model


def test_ema_averages_floats_copies_integer_buffers_and_round_trips():
    from shared.train.ema import EMA

    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model.register_buffer("index", torch.tensor([0, 1, 2]))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema.update(model)  # the first update copies
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model.index.copy_(torch.tensor([2, 0, 1]))
    ema.update(model)
    assert torch.equal(ema.module[0].weight, torch.full((2, 2), 2.0))  # 0.5 * 1 + 0.5 * 3
    assert torch.equal(ema.module.index, torch.tensor([2, 0, 1]))  # copied, never averaged
    assert ema.module[1].num_batches_tracked.dtype == torch.int64
    again = EMA(model, decay=0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 2 and torch.equal(again.module[0].weight, ema.module[0].weight)
