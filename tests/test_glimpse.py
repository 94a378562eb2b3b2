"""The Recurrent Attention Model's pieces: the glimpse sensor pixel by pixel, the location policy's
log-probability by hand, and the translated / cluttered MNIST generator."""

from __future__ import annotations

import math

import pytest
import torch

from shared.data.tensors import Split
from shared.data.translated import place
from shared.models.glimpse import Core, GlimpseNetwork, GlimpseSensor, LocationPolicy, location_to_pixel


def test_location_maps_to_pixels_by_floor_of_half_offset():
    loc = torch.tensor([-1.0, -0.95, 0.0, 0.5, 0.99, 1.0, 3.0])
    # floor((l + 1) / 2 * 10): -1 -> 0, -0.95 -> 0 (0.25), 0 -> 5, 0.5 -> 7 (7.5), 0.99 -> 9 (9.95), 1 -> 10 -> 9, 3 -> clamped 9
    assert location_to_pixel(loc, 10).tolist() == [0, 0, 5, 7, 9, 9, 9]


def test_sensor_patches_pixel_exact_at_centre_and_corner():
    image = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)  # pixel (r, c) holds 10 r + c
    images = image.repeat(2, 1, 1, 1)
    locations = torch.tensor([[0.0, 0.0], [-1.0, 0.5]])  # centres (5, 5) and (0, 7)
    retina = GlimpseSensor(patch=2, scales=2)(images, locations)
    assert retina.shape == (2, 2, 2, 2)  # (B, scales * C, patch, patch)

    # Centre (5, 5): the 2x2 patch covers rows 4-5, cols 4-5.
    assert retina[0, 0].tolist() == [[44.0, 45.0], [54.0, 55.0]]
    # The 4x4 patch covers rows 3-6, cols 3-6, each 2x2 block averaged: rows 3-4 x cols 3-4 = (33+34+43+44)/4 ...
    assert retina[0, 1].tolist() == [[38.5, 40.5], [58.5, 60.5]]
    # Corner (0, 7): the 2x2 patch covers rows -1..0 (row -1 is zero padding), cols 6-7.
    assert retina[1, 0].tolist() == [[0.0, 0.0], [6.0, 7.0]]
    # The 4x4 patch: rows -2..1, cols 5..8; top two rows are padding.
    assert retina[1, 1].tolist() == [[0.0, 0.0], [(5 + 6 + 15 + 16) / 4, (7 + 8 + 17 + 18) / 4]]


def test_max_pooling_sensor_keeps_the_brightest_pixel_of_each_block():
    image = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    retina = GlimpseSensor(patch=2, scales=2, pool="max")(image, torch.zeros(1, 2))
    assert retina[0, 0].tolist() == [[44.0, 45.0], [54.0, 55.0]]  # the finest scale is not pooled
    # The 4x4 patch covers rows 3-6, cols 3-6; each 2x2 block keeps its bottom-right (largest) pixel.
    assert retina[0, 1].tolist() == [[44.0, 46.0], [64.0, 66.0]]
    ball = torch.zeros(1, 1, 84, 84)
    ball[0, 0, 50, 30] = 1.0  # a one-pixel ball, 8 pooled pixels away from the centre
    coarse_avg, coarse_max = (GlimpseSensor(12, 4, pool)(ball, torch.zeros(1, 2))[0, 3] for pool in ("avg", "max"))
    assert coarse_max.max().item() == 1.0 and coarse_avg.max().item() == 1 / 64
    with pytest.raises(ValueError, match="pool must be 'avg' or 'max'"):
        GlimpseSensor(2, 2, pool="mean")


def test_sensor_keeps_channels_apart_and_glimpse_network_shapes():
    x = torch.zeros(3, 4, 84, 84)
    x[:, 2] = 1.0  # only channel 2 is lit
    retina = GlimpseSensor(patch=12, scales=3)(x, torch.zeros(3, 2))
    assert retina.shape == (3, 12, 12, 12)
    lit = retina.mean((0, 2, 3))
    assert (
        lit.tolist() == [0, 0, 1, 0] * 3
    )  # every scale's channel 2, nothing else (the 48x48 patch is inside the frame)
    g = GlimpseNetwork(4, patch=12, scales=3)(x, torch.zeros(3, 2))
    assert g.shape == (3, 256) and (g >= 0).all()


def test_location_log_prob_matches_hand_computation():
    policy = LocationPolicy(hidden=4, std=0.5)
    mean = torch.tensor([[0.1, -0.2]])
    location = torch.tensor([[0.3, 0.4]])
    # z = (0.4, 1.2); log N = -z^2 / 2 - log(0.5) - log(2 pi) / 2 per coordinate, summed
    expected = -0.5 * (0.4**2 + 1.2**2) - 2 * math.log(0.5) - math.log(2 * math.pi)
    assert policy.log_prob(mean, location).item() == pytest.approx(expected, abs=1e-6)
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(policy.sample(mean, generator), mean + 0.5 * noise)
    # the sample is an action: no gradient runs back along it, so log pi's gradient reaches the mean
    assert not policy.sample(mean.requires_grad_()).requires_grad


def test_location_policy_reads_the_state_detached():
    policy = LocationPolicy(hidden=4, std=0.1)
    h = torch.randn(2, 4, requires_grad=True)
    policy.log_prob(policy(h), torch.zeros(2, 2)).sum().backward()
    assert h.grad is None and policy.mean.weight.grad is not None


def test_core_rnn_and_lstm_shapes_and_reset():
    for kind in ("rnn", "lstm"):
        core = Core(8, 16, kind)
        state = core.initial_state(3, torch.device("cpu"))
        h, state = core(torch.randn(3, 8), state)
        assert h.shape == (3, 16)
        kept = Core.reset(state, torch.tensor([True, False, True]))
        first = kept[0] if kind == "lstm" else kept
        assert (first[1] == 0).all() and torch.equal(first[0], h[0])
    with pytest.raises(ValueError, match="'rnn' or 'lstm'"):
        Core(8, 16, "gru")


def digits(n: int = 6) -> Split:
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for i in range(n):
        images[i, 0, 4:24, 10:18] = 40 * (i + 1)  # a bar of its own grey level
    return Split(images, torch.arange(n))


def find_digit(canvas: torch.Tensor, digit: torch.Tensor) -> list[tuple[int, int]]:
    """Offsets where the canvas window is >= the digit everywhere and equal on the digit's ink."""
    side = canvas.shape[-1]
    ink = digit > 0
    return [
        (r, c)
        for r in range(side - 27)
        for c in range(side - 27)
        if torch.equal(canvas[r : r + 28, c : c + 28][ink], digit[ink])
    ]


def test_translated_digits_are_pasted_whole_once_and_nothing_else():
    split = digits()
    out = place(split, canvas=40, seed=1, epoch=0)
    assert out.images.shape == (6, 1, 40, 40) and out.images.dtype == torch.uint8
    assert torch.equal(out.labels, split.labels)
    for i in range(6):
        assert len(find_digit(out.images[i, 0], split.images[i, 0])) == 1
        assert out.images[i].sum() == split.images[i].sum()  # no other ink


def test_translation_is_a_function_of_seed_and_epoch():
    split = digits()
    a = place(split, 60, clutter=4, seed=1, epoch=2)
    assert torch.equal(a.images, place(split, 60, clutter=4, seed=1, epoch=2).images)
    assert not torch.equal(a.images, place(split, 60, clutter=4, seed=1, epoch=3).images)
    assert not torch.equal(a.images, place(split, 60, clutter=4, seed=2, epoch=2).images)


def test_clutter_adds_fragments_of_other_digits_around_an_intact_digit():
    split = digits()
    out = place(split, canvas=60, clutter=4, fragment=8, seed=0, epoch=0)
    grey_levels = {0} | {40 * (i + 1) for i in range(6)}
    for i in range(6):
        canvas = out.images[i, 0]
        assert set(canvas.unique().tolist()) <= grey_levels
        assert find_digit(canvas, split.images[i, 0])  # the digit is intact (max paste)
        assert canvas.sum() > split.images[i].sum()  # and something was added beside it
    with pytest.raises(ValueError, match="smaller than"):
        place(split, canvas=20)


def test_location_policy_stays_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    policy, h = LocationPolicy(hidden=8, std=0.05), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert policy.mean(h).dtype == torch.bfloat16  # what autocast does to its layer called alone
        mean = policy(h)
    assert mean.dtype == torch.float32 and torch.equal(mean, policy(h))  # the very fp32 numbers
