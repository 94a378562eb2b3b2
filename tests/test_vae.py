"""VAE: the ELBO and the IWAE bound against hand-computed values, the discretized logistic, config checks,
and tiny end-to-end runs through the real CLI (files, W&B offline, eval, exact resume)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from conftest import CONFIGS, only_run_dir, run_cli
from exact_resume import assert_resume_is_exact
from wandb_records import offline_run

from generative import vae
from generative.vae import (
    VAE,
    VAEConfig,
    VAEEvalConfig,
    VAETrainConfig,
    discretized_logistic_log_likelihood,
    elbo_terms,
    gaussian_kl,
    iwae_bound,
    log_importance_weights,
)
from shared.cli import main
from shared.tracking import read_metrics

LATENT2 = str(CONFIGS / "vae" / "latent2_mnist.yaml")
BINARIZED = str(CONFIGS / "vae" / "binarized_mnist.yaml")


class FixedEncoder(nn.Module):
    """q(z|x) = N((0.5, -1), diag(1, 0.25)) for every x."""

    def forward(self, x):
        batch = len(x)
        return torch.tensor([[0.5, -1.0]]).expand(batch, -1), torch.tensor([[0.0, math.log(0.25)]]).expand(batch, -1)


class FixedDecoder(nn.Module):
    """Four pixels with logits (z0, -z0, z1, 2)."""

    def forward(self, z):
        logits = torch.stack([z[:, 0], -z[:, 0], z[:, 1], torch.full_like(z[:, 0], 2.0)], dim=1)
        return logits.view(-1, 1, 2, 2)


def tiny_vae() -> VAE:
    vae = VAE(channels=1, image_size=4, latent_dim=2, width=1, likelihood="bernoulli")
    vae.encoder, vae.decoder = FixedEncoder(), FixedDecoder()
    return vae


X = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
NOISE = torch.tensor([[1.0, 2.0]])  # z = mu + sigma * noise = (0.5 + 1, -1 + 0.5 * 2) = (1.5, 0)


def log_sigmoid(v: float) -> float:
    return -math.log1p(math.exp(-v))


def test_elbo_terms_equal_the_hand_computed_bce_and_kl():
    log_px, kl = elbo_terms(tiny_vae(), X, X, NOISE)
    # logits (1.5, -1.5, 0, 2) against pixels (1, 0, 1, 0): log s(1.5) + log(1 - s(-1.5)) + log s(0) + log(1 - s(2))
    expected_log_px = 2 * log_sigmoid(1.5) + math.log(0.5) + log_sigmoid(-2.0)
    # KL = 1/2 sum (mu^2 + var - 1 - log var) = 1/2 ((0.25 + 1 - 1 - 0) + (1 + 0.25 - 1 - log 0.25))
    expected_kl = 0.5 * (0.25 + 0.25 - math.log(0.25))
    assert log_px.item() == pytest.approx(expected_log_px, abs=1e-6)  # -2.9428...
    assert kl.item() == pytest.approx(expected_kl, abs=1e-6)  # 0.9431...
    assert gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0]


def test_iwae_with_one_sample_is_the_elbo_estimate_of_that_sample():
    vae = tiny_vae()
    log_w = log_importance_weights(vae, X, X, NOISE[:, None])  # (1, 1)
    log_px, _ = elbo_terms(vae, X, X, NOISE)
    # log p(z) - log q(z|x) for z = (1.5, 0), noise (1, 2), logvar (0, log 0.25)
    log_prior = -0.5 * (2 * math.log(2 * math.pi) + 1.5**2 + 0.0)
    log_q = -0.5 * (2 * math.log(2 * math.pi) + math.log(0.25) + 1.0 + 4.0)
    assert log_w.item() == pytest.approx(log_px.item() + log_prior - log_q, abs=1e-6)
    assert iwae_bound(log_w).item() == pytest.approx(log_w.item(), abs=1e-7)


def test_iwae_bound_is_the_log_mean_of_the_weights_and_never_below_their_mean():
    log_w = torch.tensor([[0.0, math.log(3.0)], [-100.0, -100.0]], dtype=torch.float64)
    assert iwae_bound(log_w).tolist() == pytest.approx([math.log(2.0), -100.0], abs=1e-12)  # log((1 + 3) / 2)
    vae = tiny_vae()
    noise = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    log_w = log_importance_weights(vae, X, X, noise[None])  # (1, 500)
    assert iwae_bound(log_w).item() >= log_w.mean().item()
    # log w - log p(x|z) = log p(z) - log q(z|x), whose mean over z ~ q is -KL: the closed form, within MC error.
    log_px, kl = elbo_terms(vae, X.expand(500, -1, -1, -1), X.expand(500, -1, -1, -1), noise)
    assert (log_w[0] - log_px).mean().item() == pytest.approx(-kl[0].item(), abs=0.15)


@pytest.mark.parametrize("mean, log_scale", [(0.1, -2.0), (-0.9, -4.0), (0.99, 0.0), (-1.0, -3.0)])
def test_discretized_logistic_probabilities_sum_to_one_over_the_256_levels(mean, log_scale):
    levels = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    log_p = discretized_logistic_log_likelihood(
        levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
    )
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    if log_scale <= -2:  # a narrow logistic: its most likely level is the one nearest its mean
        assert log_p.argmax().item() == round((mean + 1) * 255 / 2)


def test_a_very_sharp_logistic_puts_almost_all_mass_on_its_level():
    levels = torch.arange(256, dtype=torch.float64) * 2 / 255 - 1
    log_p = discretized_logistic_log_likelihood(
        levels, torch.full_like(levels, levels[100].item()), torch.full_like(levels, -7.0)
    )
    # The bin's half-width 1/255 is 4.3 scales of e^-7: sigmoid(4.3) - sigmoid(-4.3) = 0.973 of the mass.
    assert log_p[100].exp().item() == pytest.approx(0.9732, abs=1e-4)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_logistic_vae_decodes_a_mean_and_a_scale_per_sub_pixel():
    vae = VAE(channels=3, image_size=32, latent_dim=8, width=8, likelihood="logistic")
    x = torch.randint(0, 256, (2, 3, 32, 32)).float()
    log_px, kl = elbo_terms(vae, x / 255, x / 127.5 - 1, torch.randn(2, 8))
    assert log_px.shape == kl.shape == (2,) and (log_px < 0).all()
    assert vae.decode_mean(torch.randn(5, 8)).shape == (5, 3, 32, 32)


@pytest.mark.parametrize(
    "override, key",
    [
        ("eval.iwae_k=0", "eval.iwae_k"),
        ("model.latent_dim=0", "model.latent_dim"),
        ("data.likelihood=gaussian", "data.likelihood"),
        ("data.name=cifar10", "data.likelihood"),  # bernoulli is for binarized MNIST
        ("metrics.num_samples=1", "metrics.num_samples"),
        ("metrics.network=inception", "metrics.inception_weights"),
        ("train.kl_warmup_steps=-1", "train.kl_warmup_steps"),
    ],
)
def test_bad_config_values_exit_2_naming_the_key(tmp_path, capsys, override, key):
    assert main(["train", BINARIZED, override, f"runs_dir={tmp_path / 'runs'}"]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------- end to end
TINY = ["train.max_steps=6", "train.batch_size=64", "eval.iwae_k=20", "eval.test_images=50", "metrics.num_samples=200"]


def test_vae_trains_end_to_end_through_the_cli(tmp_path, mnist_root, capsys):
    cache = tmp_path / "cache"
    result = run_cli(
        "train",
        LATENT2,
        *TINY,
        f"data.root={mnist_root}",
        f"metrics.cache_dir={cache}",
        "metrics.classifier_max_steps=20",
        "tracking.log_every=3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    assert (run / "config.yaml").exists() and list((run / "checkpoints").glob("step-000000006.pt"))
    for grid in ("samples", "media_reconstructions", "media_interpolations", "media_manifold"):
        assert (run / "media" / f"{grid}-000000006.png").exists(), grid
    records = read_metrics(run / "metrics.jsonl")
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [3, 6]
    assert all(r["train/loss"] == pytest.approx(r["train/kl"] + r["train/recon"], rel=1e-5) for r in train)
    summary = records[-1]["summary"]
    assert summary["test/iwae_k"] == 20 and summary["test/iwae_images"] == 50
    # The IWAE bound of the 50 images is tighter than their 20-sample ELBO.
    assert summary["test/nll_nats"] < summary["test/elbo_nats_iwae_images"]
    assert 0 < summary["samples/fid_lenet"] and 1 <= summary["samples/is_lenet"] <= 10
    assert summary["samples/num_samples"] == 200 and 0 <= summary["samples/lenet_test_error"] < 0.9
    assert list(cache.glob("lenet5-mnist-*.pt"))

    written = offline_run(run)
    assert written["run"].run_group == "vae-latent2-mnist" and "vae" in written["run"].tags
    assert written["config"]["model"]["latent_dim"] == 2
    assert written["summary"]["test/nll_nats"] == summary["test/nll_nats"]
    assert any(h.get("media/manifold/_type") == "image-file" for h in written["history"])

    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # the cached classifier is reused: nothing is trained again
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["step"] == 6
    for key in ("test/elbo_nats", "test/nll_nats", "samples/fid_lenet", "samples/is_lenet"):
        assert evaluated[key] == pytest.approx(summary[key], rel=1e-6), key


def test_vae_resumed_mid_epoch_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, mnist_root):
    overrides = [
        f"data.root={mnist_root}",
        "train.batch_size=64",
        "metrics.network=none",
        "eval.at_end=false",
        "train.max_steps=6",
        "tracking.log_every=2",
    ]

    def written_before(counters: dict) -> dict:  # before shared/train/loop.py and the Accelerator: sums in a list
        return {"sums": [counters["sums"][k] for k in ("loss", "kl", "recon")], "count": counters["count"]}

    assert_resume_is_exact(
        BINARIZED, overrides, tmp_path, stop_at=3, written_before=written_before
    )  # between two log lines


def test_kl_warmup_weighs_each_training_step_and_ends_at_one(tmp_path, mnist_root, monkeypatch):
    cfg = VAEConfig(train=VAETrainConfig(kl_warmup_steps=4))
    assert [vae.kl_weight(cfg, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert vae.kl_weight(VAEConfig(), 0) == 1.0  # no warm-up: the plain -ELBO from the first step

    weights = []
    original = vae.kl_weight
    monkeypatch.setattr(vae, "kl_weight", lambda cfg, step: weights.append(original(cfg, step)) or weights[-1])
    args = [*TINY, "train.kl_warmup_steps=4", "metrics.network=none", "eval.at_end=false", f"data.root={mnist_root}"]
    assert main(["train", BINARIZED, *args, f"runs_dir={tmp_path / 'runs'}"]) == 0
    assert weights == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]  # one call per training step, in order


def test_iwae_bound_stopped_midway_continues_from_its_saved_sums_to_the_same_figure(tmp_path):
    torch.manual_seed(0)
    model = VAE(1, 28, 4, 4, "bernoulli")
    images = (torch.rand(12, 1, 28, 28) > 0.5).to(torch.uint8)
    data = SimpleNamespace(test=images, bernoulli=True, inputs=lambda b: (b.float(), b.float()))
    cfg = VAEConfig(eval=VAEEvalConfig(iwae_k=10, chunk=40))  # groups of 4 images, 10 latents each
    whole = vae.test_iwae(model, data, cfg)

    progress, asked = tmp_path / "iwae.json", iter([False, False, True])  # a stop before the third group
    assert vae.test_iwae(model, data, cfg, progress, lambda: next(asked)) is None
    saved = json.loads(progress.read_text())
    first_eight = vae.test_iwae(model, SimpleNamespace(**{**vars(data), "test": images[:8]}), cfg)
    assert saved["done"] == 8 and saved["bound_sum"] == pytest.approx(-8 * first_eight["test/nll_nats"], rel=1e-12)
    assert vae.test_iwae(model, data, cfg, progress) == whole  # continued: the same figure to the last bit

    other = VAEConfig(eval=VAEEvalConfig(iwae_k=20, chunk=40))  # other settings: the saved sums are not used
    assert vae.test_iwae(model, data, other, progress) == vae.test_iwae(model, data, other)


def test_bench_iwae_times_each_chunk_size_and_their_bounds_agree(tmp_path):
    result = run_cli(
        "bench", "iwae", "--json", "--images", "2", "--chunks", "5000", "700", "--repeats", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["chunk"] for r in report["results"]] == [5000, 700] and report["threads"] >= 1
    assert report["images"] == "2 random binary 28x28, k = 5000, seed 0, median of 1"
    one_piece, eight_pieces = (r["nll_nats"] for r in report["results"])
    assert report["bounds_agree"] and one_piece == pytest.approx(eight_pieces, abs=1e-3)
    for row in report["results"]:  # hours for 10,000 images at the measured pace, rounded to 0.01
        assert row["hours_for_10000"] == pytest.approx(10_000 / row["images_per_s"] / 3600, abs=0.006)


def test_bench_iwae_refuses_a_chunk_that_would_group_images(tmp_path):
    result = run_cli("bench", "iwae", "--images", "1", "--chunks", "512", "10000", cwd=tmp_path)
    assert result.returncode == 2 and "--chunks in 1..9999" in result.stderr and "[512, 10000]" in result.stderr
