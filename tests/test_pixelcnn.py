"""PixelCNN and Gated PixelCNN: masks, causality, the blind spot, the cached sampler, the NLL, and the trainer
end to end through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, only_run_dir, run_cli
from exact_resume import assert_resume_is_exact
from wandb_records import offline_run

from generative.pixelcnn import GatedPixelCNN, PixelCNN, bits_per_dim, causal_mask, nll_nats, vertical_mask
from generative.sampling import draw, sample
from shared.cli import main
from shared.run import list_checkpoints
from shared.tracking import read_metrics

DIGITS = str(CONFIGS / "pixelcnn" / "digits.yaml")
BINARIZED_MNIST = str(CONFIGS / "pixelcnn" / "binarized_mnist.yaml")
QUIET = ["tracking.wandb=disabled"]


# ------------------------------------------------------------------------------------------- masks
def test_mask_a_and_b_kernels_entry_by_entry():
    a = causal_mask((5, 5), "A", 1, 1)[0, 0]
    b = causal_mask((5, 5), "B", 1, 1)[0, 0]
    expected_a = torch.tensor(
        [
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.float,
    )
    expected_b = expected_a.clone()
    expected_b[2, 2] = 1
    assert torch.equal(a, expected_a) and torch.equal(b, expected_b)
    # The horizontal stack's 1 x k kernels: the row to the left, and the centre for mask B.
    assert causal_mask((1, 5), "A", 1, 1)[0, 0].tolist() == [[1, 1, 0, 0, 0]]
    assert causal_mask((1, 5), "B", 1, 1)[0, 0].tolist() == [[1, 1, 1, 0, 0]]
    # The vertical stack: the rows above (A), and the centre row whole (B).
    assert vertical_mask(3, "A", 1, 1)[0, 0].tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    assert vertical_mask(3, "B", 1, 1)[0, 0].tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]


def test_colour_group_masks_order_r_g_b_at_the_centre_only():
    # Image channels R, G, B in, six features out (groups R G B R G B): channel c is in group c % 3.
    a = causal_mask((3, 3), "A", 3, 6, colours=3)
    b = causal_mask((3, 3), "B", 3, 6, colours=3)
    centre_a = torch.tensor(
        [[0, 0, 0], [1, 0, 0], [1, 1, 0]] * 2, dtype=torch.float
    )  # (out, in): R sees nothing, G sees R, B sees R and G
    centre_b = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]] * 2, dtype=torch.float)  # and each group itself
    assert torch.equal(a[:, :, 1, 1], centre_a) and torch.equal(b[:, :, 1, 1], centre_b)
    for mask in (a, b):  # off the centre, every channel sees every channel of the earlier pixels, none of the later
        assert (mask[:, :, 0, :] == 1).all() and (mask[:, :, 1, 0] == 1).all()
        assert (mask[:, :, 1, 2] == 0).all() and (mask[:, :, 2, :] == 0).all()
    # The output head's 1x1: logit channel k * 3 + c belongs to colour c.
    head = causal_mask((1, 1), "B", 6, 12, colours=3)[:, :, 0, 0]
    assert torch.equal(head, (torch.arange(6)[None, :] % 3 <= torch.arange(12)[:, None] % 3).float())


# ------------------------------------------------------------------------------------------- causality
SIZE = 7


def tiny(kind: str, channels: int, levels: int, layers: int = 4, num_classes=None):
    """A small random network in float64. Its head is wide enough (16 units per colour group) that no
    position has every ReLU of a group off, which would cut a dependency the masks allow."""
    torch.manual_seed(0)
    if kind == "gated":
        model = GatedPixelCNN(channels, levels, hidden=12, layers=layers, head_hidden=48, num_classes=num_classes)
    else:
        model = PixelCNN(channels, levels, hidden=12, layers=layers, head_hidden=48)
    return model.double().eval()


def subpixel_gradients(model, channels: int, levels: int, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row i: the gradient of output sub-pixel i (raster order, R -> G -> B) w.r.t. the whole input image.

    Returns (gradients (N, C, H, W), order (C, H, W): each input sub-pixel's place in the raster order).
    One backward pass: the image is repeated once per output sub-pixel, and images do not interact.
    """
    n = SIZE * SIZE * channels
    order = torch.arange(n).view(SIZE, SIZE, channels).permute(2, 0, 1)  # (C, H, W)
    torch.manual_seed(1)
    image = torch.randint(0, levels, (1, channels, SIZE, SIZE)).double()
    x = image.repeat(n, 1, 1, 1).requires_grad_()  # float levels: to_input keeps the graph
    logits = model(x, None if labels is None else labels.repeat(n))  # (N, K, C, H, W)
    i = torch.arange(n)
    channel, row, col = i % channels, i // channels // SIZE, i // channels % SIZE
    projection = torch.randn(logits.shape[1], dtype=torch.double)  # every logit of the sub-pixel counts
    (logits[i, :, channel, row, col] @ projection).sum().backward()
    return x.grad, order


@pytest.mark.parametrize("kind", ["pixelcnn", "gated"])
@pytest.mark.parametrize("channels, levels", [(1, 2), (3, 4)])
def test_no_output_sees_its_own_subpixel_or_a_later_one(kind, channels, levels):
    model = tiny(kind, channels, levels)
    gradients, order = subpixel_gradients(model, channels, levels)
    for i, grad in enumerate(gradients):
        assert (grad[order >= i] == 0).all(), f"output sub-pixel {i} depends on sub-pixel {int(order[grad != 0].max())}"
        channel, pixel = i % channels, i // channels
        row, col = divmod(pixel, SIZE)
        # R sees no channel of its own pixel, G sees R, B sees R and G: all those earlier ones it must see.
        assert (grad[:channel, row, col] != 0).all(), (i, grad[:, row, col])


def test_class_conditional_gated_pixelcnn_is_causal_too():
    model = tiny("gated", 3, 4, num_classes=10)
    gradients, order = subpixel_gradients(model, 3, 4, labels=torch.tensor([7]))
    assert all((grad[order >= i] == 0).all() for i, grad in enumerate(gradients))


def test_plain_pixelcnn_has_a_blind_spot_and_gated_has_none():
    plain, _ = subpixel_gradients(tiny("pixelcnn", 1, 2), 1, 2)
    gated, order = subpixel_gradients(tiny("gated", 1, 2), 1, 2)
    # Output (4, 2) cannot see (3, 6), up one row and right four: a 3x3 mask-B layer reaches one column to the
    # right only by also going one row up, and the 7x7 mask-A layer three columns; no depth fixes that.
    assert plain[4 * SIZE + 2, 0, 3, 6] == 0 and gated[4 * SIZE + 2, 0, 3, 6] != 0
    for i in range(SIZE * SIZE):  # the gated network's every output sees every earlier pixel
        assert (gated[i, 0][order[0] < i] != 0).all(), f"gated output {divmod(i, SIZE)} misses an earlier pixel"


# ------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize(
    "kind, channels, levels, num_classes",
    [("pixelcnn", 1, 2, None), ("pixelcnn", 3, 4, None), ("gated", 1, 2, None), ("gated", 3, 4, 10)],
)
def test_cached_sampler_draws_exactly_what_the_naive_one_draws(kind, channels, levels, num_classes):
    model = tiny(kind, channels, levels, layers=2, num_classes=num_classes)
    labels = torch.tensor([0, 3, 9]) if num_classes else None
    naive = sample(model, 3, (channels, 6, 5), seed=11, labels=labels, cached=False)
    cached = sample(model, 3, (channels, 6, 5), seed=11, labels=labels, cached=True)
    assert naive.shape == (3, channels, 6, 5) and naive.dtype == torch.long
    assert torch.equal(naive, cached)
    assert 0 <= naive.min() and naive.max() < levels and naive.unique().numel() > 1
    assert not torch.equal(cached, sample(model, 3, (channels, 6, 5), seed=12, labels=labels))  # the seed matters


def test_draw_is_the_inverse_cdf_of_the_given_uniforms():
    bernoulli = torch.tensor([[0.0], [0.0], [math.log(3)]])  # p = 1/2, 1/2, 3/4
    assert draw(bernoulli, torch.tensor([0.49, 0.51, 0.74], dtype=torch.double)).tolist() == [1, 0, 1]
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).repeat(4, 1)  # CDF 0.2, 0.5, 1.0
    assert draw(logits, torch.tensor([0.1, 0.2, 0.49, 0.99], dtype=torch.double)).tolist() == [0, 1, 1, 2]


# ------------------------------------------------------------------------------------------- likelihood
def test_nll_in_nats_matches_a_hand_computation():
    # Two binary pixels with p(1) = 1/2 and 3/4, observed 1 and 0: -ln(1/2) - ln(1/4) = ln 8.
    logits = torch.tensor([0.0, math.log(3)]).view(1, 1, 1, 1, 2)
    images = torch.tensor([1, 0], dtype=torch.uint8).view(1, 1, 1, 2)
    assert nll_nats(logits, images).item() == pytest.approx(math.log(8))
    # Three-way softmax, uniform logits: ln 3 per sub-pixel, 2 channels x 2 pixels.
    assert nll_nats(torch.zeros(1, 3, 2, 1, 2), torch.zeros(1, 2, 1, 2, dtype=torch.uint8)).item() == pytest.approx(
        4 * math.log(3)
    )
    # A batch is scored image by image, and equals the summed binary cross-entropy.
    torch.manual_seed(0)
    logits, images = torch.randn(4, 1, 1, 5, 5), torch.randint(0, 2, (4, 1, 5, 5))
    expected = F.binary_cross_entropy_with_logits(logits[:, 0], images.float(), reduction="sum")
    assert nll_nats(logits, images).shape == (4,)
    assert nll_nats(logits, images).sum().item() == pytest.approx(expected.item())


def test_bits_per_dim_divides_by_dims_and_ln_2():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)
    assert bits_per_dim(81.30, 784) == pytest.approx(0.14960, abs=1e-5)  # the PixelCNN's MNIST figure per pixel
    assert bits_per_dim(3.03 * 3072 * math.log(2), 3 * 32 * 32) == pytest.approx(3.03)


# ------------------------------------------------------------------------------------------- end to end
def test_train_on_digits_through_the_cli_writes_the_run_and_eval_agrees(tmp_path):
    result = run_cli("train", DIGITS, "train.epochs=2", "checkpoint.every=20", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    assert (run / "config.yaml").read_text().count("kind: pixelcnn") == 1
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == [10, 20, 30, 40]
    tests = [r for r in records if "test/bits_per_dim" in r]
    assert [r["step"] for r in tests] == [23, 46]  # one per epoch of ceil(1437 / 64) steps
    assert 0 < tests[-1]["test/bits_per_dim"] < tests[0]["test/bits_per_dim"] < 8  # below the uniform's 8 bits
    assert tests[-1]["test/nll_nats"] == pytest.approx(tests[-1]["test/bits_per_dim"] * 64 * math.log(2))
    summary = records[-1]["summary"]
    assert summary["test/bits_per_dim"] == tests[-1]["test/bits_per_dim"] and summary["train/steps"] == 46
    assert [p.name for p in list_checkpoints(run)] == ["step-000000040.pt", "step-000000046.pt"]
    assert sorted(p.name for p in (run / "media").iterdir()) == [
        "media_completions-000000023.png",
        "media_completions-000000046.png",
        "samples-000000023.png",
        "samples-000000046.png",
    ]

    written = offline_run(run)
    assert written["run"].run_group == "pixelcnn-digits" and list(written["run"].tags) == ["pixelcnn", "digits"]
    assert written["summary"]["test/bits_per_dim"] == summary["test/bits_per_dim"]
    assert [h["_step"] for h in written["history"] if h.get("samples/_type") == "image-file"] == [23, 46]

    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["step"] == 46 and metrics["test/bits_per_dim"] == pytest.approx(
        summary["test/bits_per_dim"], rel=1e-6
    )


def test_validation_images_are_held_out_of_training_and_scored_beside_the_test_set(tmp_path):
    result = run_cli("train", DIGITS, "data.val_size=157", "train.epochs=1", *QUIET, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    records = read_metrics(run / "metrics.jsonl")
    scored = [r for r in records if "val/nll_nats" in r]
    assert [r["step"] for r in scored] == [20]  # one epoch of ceil((1437 - 157) / 64) steps, not 23
    summary = records[-1]["summary"]
    assert summary["val/nll_nats"] == scored[0]["val/nll_nats"] != summary["test/nll_nats"]

    # The figure is the mean NLL of exactly the 157 held-out training images under the final weights.
    from generative.pixelcnn import build_model, mean_nll
    from shared.checkpoint import load_checkpoint
    from shared.config import load_config
    from shared.data import load_dataset
    from shared.data.tensors import hold_out

    _, cfg = load_config(run / "config.yaml")
    model = build_model(cfg.model, channels=1, levels=256, num_classes=10)
    model.load_state_dict(load_checkpoint(list_checkpoints(run)[-1])["state"]["model"])
    _, held = hold_out(load_dataset("digits", None, False).train, 157, "data.val_size")
    assert mean_nll(model, held, 500, False)["nll_nats"] == pytest.approx(summary["val/nll_nats"], rel=1e-6)
    evaluated = json.loads(run_cli("eval", str(run), cwd=tmp_path).stdout)
    assert evaluated["val/nll_nats"] == pytest.approx(summary["val/nll_nats"], rel=1e-6)


def test_binary_validation_set_is_one_fixed_draw_of_its_own():
    from shared.data.binarize import binarize_test, binarize_validation

    grey = torch.full((50, 1, 28, 28), 128, dtype=torch.uint8)
    drawn = binarize_validation(grey)
    assert torch.equal(drawn, binarize_validation(grey)) and not torch.equal(drawn, binarize_test(grey))
    assert set(drawn.unique().tolist()) == {0, 1}


def test_resume_from_a_mid_epoch_checkpoint_ends_like_the_uninterrupted_run(tmp_path):
    # Stopped at step 25: in the second epoch (of 23 steps), between two log lines (every 10 steps).
    assert_resume_is_exact(DIGITS, ["train.max_steps=40"], tmp_path, stop_at=25)


def test_class_conditional_gated_run_draws_a_row_per_class(tmp_path):
    overrides = [
        "model.kind=gated",
        "model.hidden=8",
        "model.conditional=true",
        "train.max_steps=5",
        "sample.count=20",
        *QUIET,
    ]
    assert main(["train", DIGITS, *overrides, f"runs_dir={tmp_path}"]) == 0
    run = only_run_dir(tmp_path)
    assert read_metrics(run / "metrics.jsonl")[-1]["summary"]["test/bits_per_dim"] < 8
    from PIL import Image

    grid = Image.open(run / "media" / "samples-000000005.png")
    assert grid.size == (2 + 2 * 10, 2 + 10 * 10)  # 10 classes x 2 images of 8x8 with 2-pixel gaps: one row per class


def test_binarized_mnist_trains_briefly_and_scores_the_fixed_binary_test_set(tmp_path, mnist_root):
    overrides = [
        f"data.root={mnist_root}",
        "data.download=false",
        "model.hidden=4",
        "model.layers=1",
        "model.head_hidden=8",
        "train.max_steps=4",
        "train.batch_size=16",
        "train.eval_batch_size=2000",
        "sample.count=4",
        "sample.completions=0",  # 784 more sampler steps; the digits run above draws the completions
        *QUIET,
    ]
    result = run_cli("train", BINARIZED_MNIST, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    summary = read_metrics(run / "metrics.jsonl")[-1]["summary"]
    assert summary["train/steps"] == 4
    assert 0 < summary["test/nll_nats"] < 784 * math.log(2) * 1.5  # near a coin per pixel after 4 steps
    assert (run / "media" / "samples-000000004.png").exists()
    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test/nll_nats"] == pytest.approx(summary["test/nll_nats"], rel=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        (["data.name=cifar10", "model.hidden=16"], "model.hidden=16: must be a positive multiple of 3"),
        (["model.kind=lstm"], "model.kind='lstm' is not a valid choice"),
        (["model.conditional=true"], "model.conditional=True: class conditioning needs model.kind=gated"),
        (["model.kernel=4"], "model.kernel=4: must be odd and >= 3"),
        (["data.name=binarised_mnist"], "valid choices: binarized_mnist, mnist, cifar10, digits"),
        (["data.val_size=-1"], "data.val_size=-1: must be >= 0"),
        (["data.val_size=1437"], "data.val_size=1437 leaves no training images (the set has 1437)"),
    ],
)
def test_bad_config_values_exit_2_naming_the_key(tmp_path, capsys, override, message):
    assert main(["train", DIGITS, *override, *QUIET, f"runs_dir={tmp_path}"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_bench_pixelcnn_reports_both_samplers_and_that_they_agree(tmp_path):
    result = run_cli("bench", "pixelcnn", "--json", "--image-size", "5", "--batch-size", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["batch_size"] == 2 and [r["kind"] for r in report["results"]] == ["pixelcnn", "gated"]
    for row in report["results"]:
        assert row["samples_match"] and row["mismatched_subpixels"] == 0
        assert row["naive_s"] > 0 and row["cached_s"] > 0 and row["parameters"] > 0
        # speedup is kept to 2 decimals and the times to 4, so the two agree to rounding
        assert row["speedup"] == pytest.approx(row["naive_s"] / row["cached_s"], rel=0.01, abs=0.006)
