"""DCGAN: generator shapes and range, image scaling, config checks, and tiny end-to-end runs through the
real CLI (files, W&B offline, eval against the training run's scores, exact resume)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import CONFIGS, only_run_dir, run_cli
from exact_resume import assert_resume_is_exact
from wandb_records import offline_run

from generative.dcgan import to_tanh_range
from shared.cli import main
from shared.models.dcgan import DCGANGenerator
from shared.tracking import read_metrics

MNIST = str(CONFIGS / "dcgan" / "mnist.yaml")
CIFAR = str(CONFIGS / "dcgan" / "cifar10.yaml")


@pytest.mark.parametrize("size, channels", [(32, 1), (64, 3)])
def test_generator_output_shape_and_range(size, channels):
    torch.manual_seed(0)
    generator = DCGANGenerator(latent_dim=100, channels=channels, image_size=size, base_width=8)
    assert generator(torch.randn(4, 100)).shape == (4, channels, size, size)
    with torch.no_grad():
        generator.net[-2].weight.mul_(1000)  # the last convolution, before tanh: drive it into saturation
    images = generator(torch.randn(4, 100, 1, 1))
    assert images.shape == (4, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1 and images.abs().max() > 0.99


def test_images_are_scaled_to_the_tanh_range_and_padded_black():
    images = torch.tensor([[[[0, 255], [51, 204]]]], dtype=torch.uint8)
    x = to_tanh_range(images, pad=1)
    assert x.shape == (1, 1, 4, 4)
    assert torch.allclose(x[0, 0, 1:3, 1:3], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]))
    assert (x[0, 0, 0] == -1).all() and (x[0, 0, :, 0] == -1).all()


@pytest.mark.parametrize(
    "config, override, key",
    [
        (MNIST, "data.pad=0", "data.pad"),  # 28x28 is not a power of two
        (MNIST, "train.batch_size=1", "train.batch_size"),
        (MNIST, "metrics.every=sometimes", "metrics.every"),
        (MNIST, "optim.lr=0", "optim.lr"),
        (CIFAR, "metrics.network=lenet", "metrics.network"),  # LeNet scores MNIST only
        (CIFAR, "device=cpu", "metrics.inception_weights"),  # the config needs the file named
    ],
)
def test_bad_config_values_exit_2_naming_the_key(tmp_path, capsys, config, override, key):
    assert main(["train", config, override, f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_dcgan_trains_end_to_end_through_the_cli(tmp_path, mnist_root, capsys):
    result = run_cli(
        "train",
        MNIST,
        f"data.root={mnist_root}",
        "train.max_steps=4",
        "train.batch_size=32",
        "metrics.num_samples=200",
        f"metrics.cache_dir={tmp_path / 'cache'}",
        "metrics.classifier_max_steps=20",
        "tracking.log_every=2",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    assert (run / "config.yaml").exists() and (run / "checkpoints" / "step-000000004.pt").exists()
    assert (run / "media" / "samples-000000004.png").exists()
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "train/d_loss" in r]
    assert [r["step"] for r in train] == [2, 4]
    assert all(0 < r["train/d_real"] < 1 and 0 < r["train/d_fake"] < 1 for r in train)
    summary = records[-1]["summary"]
    assert summary["train/steps"] == 4 and summary["samples/fid_lenet"] > summary["samples/fid_lenet_real"] > 0
    assert 1 <= summary["samples/is_lenet"] <= 10

    written = offline_run(run)
    assert written["run"].run_group == "dcgan-mnist" and list(written["run"].tags) == ["dcgan", "mnist", "generative"]
    assert written["config"]["optim"]["betas"] == [0.5, 0.999]
    assert written["summary"]["samples/fid_lenet"] == summary["samples/fid_lenet"]
    assert any(h.get("samples/_type") == "image-file" for h in written["history"])

    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 4
    assert evaluated["samples/fid_lenet"] == pytest.approx(summary["samples/fid_lenet"], rel=1e-6)


def test_dcgan_resumed_mid_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, mnist_root):
    overrides = [
        f"data.root={mnist_root}",
        "train.batch_size=32",
        "metrics.network=none",
        "train.max_steps=4",
        "tracking.log_every=3",
    ]

    def written_before(counters: dict) -> dict:  # before shared/train/loop.py and the Accelerator: sums in a list
        sums = [counters["sums"][k] for k in ("d_loss", "g_loss", "d_real", "d_fake")]
        return {"sums": sums, "count": counters["count"]}

    states = ("generator", "discriminator")
    assert_resume_is_exact(MNIST, overrides, tmp_path, stop_at=2, states=states, written_before=written_before)
