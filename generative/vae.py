"""Variational autoencoder (Kingma, Welling 2013, "Auto-encoding variational Bayes"), scored by the
importance-weighted bound of Burda, Grosse, Salakhutdinov 2016 ("Importance weighted autoencoders").

    pixlab train configs/vae/binarized_mnist.yaml
    pixlab eval runs/<id>                      # test -ELBO and IWAE NLL (k = eval.iwae_k), in nats

q(z|x) = N(mu(x), diag(exp(logvar(x)))) from the conv encoder, p(z) = N(0, I), and p(x|z) from the conv
decoder (shared/models/conv_vae.py), one of:
- bernoulli: binarized MNIST, each pixel a Bernoulli of the decoder's logit. Training images are
  binarized afresh every epoch (dynamic binarization), the test set once (shared/data/binarize.py).
- logistic: 8-bit images, each sub-pixel a discretized logistic over its 256 levels (PixelCNN++, Salimans
  et al. 2017, with one component): the decoder gives a mean and a log-scale per sub-pixel.

The loss is the negative ELBO per image, in nats: -E_q[log p(x|z)] (one reparameterized sample, logged as
train/recon) + KL(q(z|x) || p(z)) (in closed form, train/kl). With `train.kl_warmup_steps`, the gradient
step weighs the KL term from near 0 up to 1 over those first steps (the logged loss stays the full -ELBO).
The test NLL is the IWAE bound

    log p(x) >= log (1/k) sum_i p(x, z_i) / q(z_i|x),   z_i ~ q(z|x)

(k = 5000 in Burda et al.), which tightens toward log p(x) as k grows; it is computed in chunks of latents
with logsumexp. Samples are the decoder's means (pixel probabilities for bernoulli), so their LeNet-FID
(generative/metrics.py) sits beside DCGAN's from the same pipeline.

Each epoch is a permutation that depends on (seed, epoch) only, and the binarization too, so a run stopped
mid-epoch resumes at the next batch and ends with the weights an uninterrupted run ends with. Evaluation
and media draw their noise from their own seeded generators and never touch the training RNG.

Training runs through the shared Accelerator (`accel:`: precision, channels_last, compile). The loss terms
are summed in fp32 under any precision, and evaluation runs in fp32: the test bounds are compared with
published figures to a tenth of a nat, and a bf16 logit carries three significant digits.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from generative.metrics import MetricsConfig, SampleScorer, check_metrics_config
from shared.atomic import atomic_write_text
from shared.config import RunConfig, register, require, require_positive
from shared.data import ImageData, Split, epoch_order, load_dataset
from shared.data.binarize import binarize, binarize_test
from shared.models.conv_vae import ConvDecoder, ConvEncoder
from shared.rng import stream
from shared.run import Run
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.loop import EpochClock, RunningMeans
from shared.train.optim import OptimConfig, Schedule, ScheduleConfig, make_optimizer

LOG_2PI = math.log(2 * math.pi)


@dataclass
class VAEDataConfig:
    name: Literal["mnist", "cifar10"] = "mnist"
    root: Optional[str] = None  # folder holding <name>/; default $PIXLAB_DATA, then ~/.cache/pixlab/data
    download: bool = True
    likelihood: Literal["bernoulli", "logistic"] = "bernoulli"  # bernoulli: binarized pixels; logistic: 256 levels


@dataclass
class VAEModelConfig:
    latent_dim: int = 32
    width: int = 32  # channels of the first conv (the second has twice as many)


@dataclass
class VAETrainConfig:
    epochs: int = 20
    batch_size: int = 128
    eval_batch_size: int = 1000
    max_steps: Optional[int] = None  # stop earlier than `epochs` (smoke tests, budgets)
    grad_clip: Optional[float] = None
    kl_warmup_steps: int = 0  # the KL term's weight rises linearly from 0 to 1 over these steps (0: always 1)


@dataclass
class VAEEvalConfig:
    iwae_k: int = 5000  # importance samples per test image (Burda et al. 2016 report NLL with k = 5000)
    test_images: Optional[int] = None  # score the first N test images with the IWAE bound; null: all of them
    # latents decoded in one forward while computing the IWAE bound: 512 keeps the decoder's maps in cache; at one
    # thread on an AVX-512 EPYC the bound at k = 5000 ran 1.9x faster than with 8192 (4.1 against 2.2 images/s,
    # runs/bench/iwae-amd-epyc-avx512.json)
    chunk: int = 512
    at_end: bool = True  # compute the IWAE NLL at the end of training (pixlab eval always does)


@dataclass
class MediaConfig:
    samples: int = 64  # images decoded from fixed noise every epoch
    reconstructions: int = 32  # test images shown beside their reconstructions
    interpolations: int = 8  # rows of latent interpolations between two test images
    interpolation_steps: int = 8
    manifold_size: int = 20  # the side of the 2-D latent manifold grid (latent_dim == 2 only)


@dataclass
class VAEConfig(RunConfig):
    algo: str = "vae"
    data: VAEDataConfig = field(default_factory=VAEDataConfig)
    model: VAEModelConfig = field(default_factory=VAEModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: VAETrainConfig = field(default_factory=VAETrainConfig)
    eval: VAEEvalConfig = field(default_factory=VAEEvalConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(
            self,
            "model.latent_dim",
            "model.width",
            "train.epochs",
            "train.batch_size",
            "train.eval_batch_size",
            "optim.lr",
            "eval.iwae_k",
            "eval.chunk",
            "media.samples",
            optional=("train.max_steps", "eval.test_images"),
        )
        require(
            self.media.interpolation_steps >= 2,
            "media.interpolation_steps",
            "must be >= 2",
            self.media.interpolation_steps,
        )
        require(self.train.kl_warmup_steps >= 0, "train.kl_warmup_steps", "must be >= 0", self.train.kl_warmup_steps)
        require(self.media.manifold_size >= 2, "media.manifold_size", "must be >= 2", self.media.manifold_size)
        require(
            self.data.likelihood != "bernoulli" or self.data.name == "mnist",
            "data.likelihood",
            "'bernoulli' models binarized MNIST; use 'logistic' for 8-bit colour images",
            self.data.likelihood,
        )
        require(
            self.schedule.name != "plateau",
            "schedule.name",
            "'plateau' reads a validation split, which the VAE does not hold out",
            self.schedule.name,
        )
        check_metrics_config(self.metrics, self.data.name)


# --------------------------------------------------------------------- the model and its likelihoods
class VAE(nn.Module):
    """Conv encoder and decoder; the decoder gives logits (bernoulli) or means and log-scales (logistic)."""

    def __init__(self, channels: int, image_size: int, latent_dim: int, width: int, likelihood: str) -> None:
        super().__init__()
        self.channels, self.latent_dim, self.likelihood = channels, latent_dim, likelihood
        self.encoder = ConvEncoder(channels, image_size, latent_dim, width)
        out_channels = channels if likelihood == "bernoulli" else 2 * channels
        self.decoder = ConvDecoder(latent_dim, out_channels, image_size, width)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1], noise (B, latent_dim) -> (decoder output for z = mu + sigma * noise, mu, logvar)."""
        mu, logvar = self.encode(x)
        return self.decoder(mu + (0.5 * logvar).exp() * noise), mu, logvar

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> mu, logvar (B, latent_dim)."""
        return self.encoder(x)

    def log_likelihood(self, target: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats per image, (B,): target (B, C, H, W) in {0, 1} (bernoulli) or [-1, 1] (logistic)."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_likelihood(decoded, target)
        mean, log_scale = decoded.chunk(2, dim=1)
        return discretized_logistic_log_likelihood(target, mean, log_scale).flatten(1).sum(1)

    def mean_image(self, decoded: torch.Tensor) -> torch.Tensor:
        """What to show of p(x|z): pixel probabilities (bernoulli) or logistic means, (B, C, H, W) in [0, 1]."""
        if self.likelihood == "bernoulli":
            return decoded.sigmoid()
        return decoded[:, : self.channels].add(1).div(2).clamp(0, 1)

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean_image(self.decoder(z))


def bernoulli_log_likelihood(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """sum over pixels of log Bernoulli(target; sigmoid(logits)), nats, (B,); target in {0, 1}."""
    return -F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1)


def discretized_logistic_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per sub-pixel, nats, for x in [-1, 1] on the 256-level grid (x = 2 v / 255 - 1, v in 0..255).

    Each level owns a bin of width 2/255 centred on it; the two end bins reach out to -inf and +inf, so the
    256 probabilities sum to 1. Where a bin's mass underflows (below 1e-5), its log is taken from the
    density at the centre times the bin width instead, as in PixelCNN++.
    """
    log_scale = log_scale.clamp(min=-7.0)  # PixelCNN++'s floor: a scale of e^-7 is far below one bin
    inv_scale = torch.exp(-log_scale)
    centred = x - mean
    upper = inv_scale * (centred + 1 / 255)
    lower = inv_scale * (centred - 1 / 255)
    log_cdf_upper = F.logsigmoid(upper)  # the bin of level 0 holds everything below its upper edge
    log_survival_lower = F.logsigmoid(-lower)  # the bin of level 255 holds everything above its lower edge
    mass = torch.sigmoid(upper) - torch.sigmoid(lower)
    middle = inv_scale * centred
    log_density_mid = middle - log_scale - 2 * F.softplus(middle)
    log_mass = torch.where(mass > 1e-5, mass.clamp(min=1e-12).log(), log_density_mid - math.log(127.5))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_survival_lower, log_mass))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) in closed form, nats, (B,)."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)


def elbo_terms(
    vae: VAE, x: torch.Tensor, target: torch.Tensor, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(x|z), KL(q || p)) per image, nats, (B,) each, with z = mu + sigma * noise, noise (B, latent_dim).

    The terms are computed in fp32 under autocast too: each sums hundreds of per-pixel terms, which bf16's
    8-bit mantissa would round by a few tenths of a nat.
    """
    decoded, mu, logvar = vae(x, noise)
    return vae.log_likelihood(target, decoded.float()), gaussian_kl(mu.float(), logvar.float())


def log_importance_weights(vae: VAE, x: torch.Tensor, target: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """log p(x, z_i) - log q(z_i|x), nats, (B, S), for z_i = mu + sigma * noise[:, i], noise (B, S, latent_dim).

    Their mean is a Monte Carlo ELBO; `iwae_bound` of all k of them is the IWAE bound.
    """
    mu, logvar = vae.encode(x)
    batch, samples, _ = noise.shape
    z = mu[:, None] + (0.5 * logvar[:, None]).exp() * noise  # (B, S, L)
    log_q = -0.5 * (LOG_2PI + logvar[:, None] + noise.square()).sum(2)
    log_prior = -0.5 * (LOG_2PI + z.square()).sum(2)
    decoded = vae.decoder(z.flatten(0, 1))  # (B * S, C', H, W)
    repeated = target[:, None].expand(-1, samples, *target.shape[1:]).flatten(0, 1)
    log_px = vae.log_likelihood(repeated, decoded).view(batch, samples)
    return log_px + log_prior - log_q


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_i exp(log_weights[:, i]) for log weights (B, k): the IWAE lower bound on log p(x), (B,)."""
    return torch.logsumexp(log_weights, dim=1) - math.log(log_weights.shape[1])


# --------------------------------------------------------------------- data
class VAEData:
    """The dataset as the model reads it: encoder input in [0, 1] and likelihood target, per batch of uint8."""

    def __init__(self, cfg: VAEConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.images: ImageData = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download).to(device)
        self.bernoulli = cfg.data.likelihood == "bernoulli"
        test = self.images.test.images
        self.test = binarize_test(test) if self.bernoulli else test  # (N, C, H, W) uint8: {0, 1} or 0..255

    def train_epoch(self, epoch: int) -> Split:
        """The training split of an epoch: a fresh binarization per (seed, epoch), or the 8-bit images."""
        train = self.images.train
        return Split(binarize(train.images, self.cfg.seed, epoch), train.labels) if self.bernoulli else train

    def inputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, C, H, W) -> (encoder input in [0, 1], likelihood target: {0, 1} or [-1, 1])."""
        if self.bernoulli:
            x = images.float()
            return x, x
        x = images.float().div(255)
        return x, x * 2 - 1


# --------------------------------------------------------------------- training
def kl_weight(cfg: VAEConfig, step: int) -> float:
    """The KL term's weight in the objective of step `step` (0-based): (step + 1) / kl_warmup_steps, then 1
    (Sonderby et al. 2016's warm-up; the logged train/loss is always the full negative ELBO)."""
    return min(1.0, (step + 1) / cfg.train.kl_warmup_steps) if cfg.train.kl_warmup_steps else 1.0


def train(cfg: VAEConfig, run: Run) -> None:
    data = VAEData(cfg, run.device)
    channels, size = data.images.train.images.shape[1:3]
    accel = Accelerator(cfg.accel, run.device)
    vae = VAE(channels, size, cfg.model.latent_dim, cfg.model.width, cfg.data.likelihood).to(run.device)
    optimizer = make_optimizer(vae.parameters(), cfg.optim)
    net = accel.prepare(vae)  # what the training step calls (maybe compiled)
    n_train = len(data.images.train)
    clock = EpochClock.from_config(cfg, steps_per_epoch=math.ceil(n_train / cfg.train.batch_size))
    schedule = Schedule(optimizer, cfg.schedule, clock.total_steps)
    objects = {"model": vae, "optimizer": optimizer, "schedule": schedule}
    scorer = (
        SampleScorer(cfg.metrics, data.images, cfg.data.root, run.device, cfg.seed)
        if cfg.metrics.network != "none"
        else None
    )

    state = run.restore(objects) or {"step": 0}
    clock.start(state["step"])
    running = RunningMeans(["loss", "kl", "recon"], run.device, state)  # -ELBO, KL, -log p(x|z)
    # The Accelerator's state (the fp16 loss scale) rides in the counters: checkpoints from before the VAE
    # had an Accelerator hold none, and must still resume.
    accel.load_state_dict(state.get("accel"))

    progress = tqdm(
        total=clock.total_steps, initial=clock.step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True
    )
    last = {}  # the metrics of the last evaluation, which the summary repeats
    while not clock.stop_now:
        order = epoch_order(n_train, cfg.seed, clock.epoch, run.device)
        vae.train()
        for images, _ in data.train_epoch(clock.epoch).batches(cfg.train.batch_size, order, start=clock.batch):
            x, target = data.inputs(images)
            noise = torch.randn(len(x), cfg.model.latent_dim, device=run.device)
            with accel.autocast():
                log_px, kl = elbo_terms(net, accel.to_input(x), target, noise)
            loss = (kl - log_px).mean()  # the negative ELBO, nats per image: what is logged
            objective = (kl_weight(cfg, clock.step) * kl - log_px).mean()  # the same after the KL warm-up
            accel.backward_step(objective, optimizer, vae.parameters(), cfg.train.grad_clip)
            schedule.step()
            clock.tick()
            running.add(loss=loss, kl=kl.mean(), recon=-log_px.mean())
            progress.update(1)

            if clock.log_now:
                metrics = running.pop()
                run.check_finite("train/loss", metrics["train/loss"], clock.step)
                run.log(metrics | {"train/lr": schedule.lr} | clock.pace(cfg.train.batch_size), clock.step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.2f}")
            if clock.epoch_ended or clock.finished:
                score = cfg.metrics.every == "epoch" or clock.finished
                last = end_of_epoch(cfg, run, vae, data, scorer, clock.step, progress, score=score)
                vae.train()
            clock.stopped = run.should_stop
            if clock.checkpoint_now:
                run.save(clock.step, objects, running.state() | {"accel": accel.state_dict()})
            if clock.stop_now:
                break
    progress.close()
    if clock.stopped:
        return

    if clock.step != last.get("step"):  # a finished run resumed: nothing was evaluated in this process
        last = (
            {"step": clock.step}
            | test_elbo(vae, data, cfg)
            | (scorer.score(sampler(vae)) if scorer is not None else {})
        )
    summary = {"train/steps": clock.step} | {k: v for k, v in last.items() if k != "step"}
    if cfg.eval.at_end:
        # Hours at k = 5000: a stop saves the bound's sums beside the run, and the resumed run continues them.
        iwae = test_iwae(vae, data, cfg, run.dir / f"iwae-{clock.step:09d}.json", lambda: run.should_stop)
        if iwae is None:
            return
        summary |= iwae
    if scorer is not None:
        summary |= scorer.reference(data.images)
    run.summary(summary)
    nll = f", IWAE NLL {summary['test/nll_nats']:.2f} (k = {cfg.eval.iwae_k})" if cfg.eval.at_end else ""
    print(f"{cfg.name}: test -ELBO {summary['test/elbo_nats']:.2f} nats{nll} after {clock.step} steps")


def end_of_epoch(cfg: VAEConfig, run: Run, vae: VAE, data: VAEData, scorer, step: int, progress, score: bool) -> dict:
    """Log the test -ELBO, the samples' scores when `score`, and the media; return {'step': step, **metrics}."""
    metrics = test_elbo(vae, data, cfg)
    if scorer is not None and score:
        metrics |= scorer.score(sampler(vae))
    run.log(metrics, step)
    log_media(cfg, run, vae, data, step)
    fid = "".join(f", {k.split('/')[1]} {v:.2f}" for k, v in metrics.items() if k.startswith("samples/"))
    progress.write(f"step {step}: test -ELBO {metrics['test/elbo_nats']:.2f} nats{fid}")
    return {"step": step} | metrics


def sampler(vae: VAE):
    """sample(generator, n) -> n decoder means from z ~ N(0, I), for the SampleScorer."""

    @torch.no_grad()
    def sample(generator: torch.Generator, n: int) -> torch.Tensor:
        vae.eval()
        z = torch.randn(n, vae.latent_dim, generator=generator, device=generator.device)
        return vae.decode_mean(z)

    return sample


# --------------------------------------------------------------------- evaluation
@torch.no_grad()
def test_elbo(vae: VAE, data: VAEData, cfg: VAEConfig) -> dict:
    """The test-set -ELBO (one latent sample per image, from a fixed generator) and its two terms, nats per image."""
    vae.eval()
    device = data.test.device
    generator = stream(cfg.seed, "test elbo", device=device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for first in range(0, len(data.test), cfg.train.eval_batch_size):
        x, target = data.inputs(data.test[first : first + cfg.train.eval_batch_size])
        noise = torch.randn(len(x), vae.latent_dim, generator=generator, device=device)
        log_px, kl = elbo_terms(vae, x, target, noise)
        totals += torch.stack([kl.sum(), -log_px.sum()]).double()
    kl, recon = (totals / len(data.test)).tolist()
    metrics = {"test/elbo_nats": kl + recon, "test/kl": kl, "test/recon": recon}
    if not data.bernoulli:
        metrics["test/elbo_bits_per_dim"] = (kl + recon) / (data.test[0].numel() * math.log(2))
    return metrics


@torch.no_grad()
def test_iwae(
    vae: VAE, data: VAEData, cfg: VAEConfig, progress: Optional[Path] = None, should_stop=lambda: False
) -> Optional[dict]:
    """The IWAE bound with k = eval.iwae_k on the first eval.test_images test images (test/nll_nats), and the
    mean of the same log weights, a k-sample ELBO of those images (test/elbo_nats_iwae_images); nats per image.

    Images go through in groups of max(1, chunk // k), each group's k latents in pieces of at most `chunk`
    decoded latents; the k log weights of an image are gathered before the logsumexp. Each group draws its
    latents from its own generator, so the sums can stop and continue: with a `progress` file (JSON), they
    are saved there every minute and when `should_stop()` turns true (then None is returned), and a later
    call with the same file and settings continues from them. At k = 5000 on all 10,000 test images the
    bound takes hours on a CPU.
    """
    vae.eval()
    k, device = cfg.eval.iwae_k, data.test.device
    test = data.test[: cfg.eval.test_images]
    group = max(1, cfg.eval.chunk // k)
    per_piece = max(1, cfg.eval.chunk // group)
    settings = {"k": k, "images": len(test), "group": group, "per_piece": per_piece, "seed": cfg.seed}
    done, bound_sum, weight_sum = 0, 0.0, 0.0
    if progress is not None and progress.exists():
        saved = json.loads(progress.read_text())
        if saved["settings"] == settings:
            done, bound_sum, weight_sum = saved["done"], saved["bound_sum"], saved["weight_sum"]
    saved_at = time.monotonic()
    for first in range(done, len(test), group):
        stopping = should_stop()
        if progress is not None and (stopping or time.monotonic() - saved_at > 60):
            state = {"settings": settings, "done": first, "bound_sum": bound_sum, "weight_sum": weight_sum}
            atomic_write_text(progress, json.dumps(state))
            saved_at = time.monotonic()
        if stopping:
            return None
        generator = stream(cfg.seed, "iwae images", first, device=device)
        x, target = data.inputs(test[first : first + group])
        log_w = torch.cat(
            [
                log_importance_weights(
                    vae,
                    x,
                    target,
                    torch.randn(len(x), min(per_piece, k - s), vae.latent_dim, generator=generator, device=device),
                )
                for s in range(0, k, per_piece)
            ],
            dim=1,
        )  # (group, k)
        bound_sum += iwae_bound(log_w.double()).sum().item()
        weight_sum += log_w.double().mean(1).sum().item()
    nll = -bound_sum / len(test)
    metrics = {
        "test/nll_nats": nll,
        "test/elbo_nats_iwae_images": -weight_sum / len(test),  # the k-sample ELBO of the same images: the bound's gain
        "test/iwae_k": k,
        "test/iwae_images": len(test),
    }
    if not data.bernoulli:
        metrics["test/nll_bits_per_dim"] = nll / (test[0].numel() * math.log(2))
    return metrics


def evaluate(cfg: VAEConfig, checkpoint: dict) -> dict:
    """Test -ELBO, the IWAE NLL (k = eval.iwae_k) and, with a feature network, the samples' FID and IS."""
    device = select_device(cfg.device)
    data = VAEData(cfg, device)
    channels, size = data.images.train.images.shape[1:3]
    vae = VAE(channels, size, cfg.model.latent_dim, cfg.model.width, cfg.data.likelihood)
    vae.load_state_dict(checkpoint["state"]["model"])
    # the trainer's layout: channels_last made the decoder 2.5x faster at one thread
    vae = Accelerator(cfg.accel, device).prepare(vae, in_place=True)
    metrics = {"step": checkpoint["step"]} | test_elbo(vae, data, cfg) | test_iwae(vae, data, cfg)
    if cfg.metrics.network != "none":
        metrics |= SampleScorer(cfg.metrics, data.images, cfg.data.root, device, cfg.seed).score(sampler(vae))
    return metrics


# --------------------------------------------------------------------- media
@torch.no_grad()
def log_media(cfg: VAEConfig, run: Run, vae: VAE, data: VAEData, step: int) -> None:
    """Reconstructions, samples from fixed noise, latent interpolations, and the 2-D manifold when latent_dim == 2."""
    vae.eval()
    device, m = run.device, cfg.media
    generator = stream(cfg.seed, "fixed noise", device=device)  # the same noise every epoch

    x, _ = data.inputs(data.test[: m.reconstructions])  # (N, C, H, W) in [0, 1]
    rebuilt = vae.decode_mean(vae.encode(x)[0])
    rows = [t for first in range(0, len(x), 8) for t in (x[first : first + 8], rebuilt[first : first + 8])]
    run.log_images(
        "media/reconstructions", torch.cat(rows), step
    )  # odd rows the test images, even rows their reconstructions

    z = torch.randn(m.samples, vae.latent_dim, generator=generator, device=device)
    run.log_images("samples", vae.decode_mean(z), step)  # the stable W&B media key

    ends, _ = vae.encode(data.inputs(data.test[: 2 * m.interpolations])[0])
    start, end = ends[0::2], ends[1::2]  # (rows, L): pairs of consecutive test images
    weights = torch.linspace(0, 1, m.interpolation_steps, device=device).view(1, -1, 1)
    path = (start[:, None] * (1 - weights) + end[:, None] * weights).flatten(0, 1)  # (rows * steps, L)
    run.log_images("media/interpolations", vae.decode_mean(path), step, nrow=m.interpolation_steps)

    if vae.latent_dim == 2:
        # Kingma & Welling's Figure 4: the decoder over a grid of quantiles of the N(0, I) prior.
        quantiles = torch.special.ndtri(torch.linspace(0.05, 0.95, m.manifold_size, device=device))
        grid = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), dim=-1).flatten(0, 1)
        run.log_images("media/manifold", vae.decode_mean(grid), step, nrow=m.manifold_size)


register(
    VAEConfig,
    train,
    evaluate,
    metrics=[
        {"name": "test/elbo_nats", "goal": "minimize", "unit": "nats/image"},  # the negative ELBO, every epoch
        {"name": "test/nll_nats", "goal": "minimize", "unit": "nats/image", "once": True},  # the IWAE bound
        {"name": "test/nll_bits_per_dim", "goal": "minimize", "unit": "bits/dim", "once": True},
        {"name": "train/loss", "goal": "minimize", "unit": "nats/image"},  # the negative ELBO
        {"name": "train/kl", "unit": "nats/image"},
        {"name": "samples/fid_lenet", "goal": "minimize"},
    ],
    media=["samples"],
)
