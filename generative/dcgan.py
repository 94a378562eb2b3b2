"""DCGAN (Radford, Metz, Chintala 2015, "Unsupervised representation learning with deep convolutional
generative adversarial networks"), trained as the paper's guidelines say.

    pixlab train configs/dcgan/mnist.yaml
    pixlab eval runs/<id>                      # FID and IS analogue of the latest generator

The generator and discriminator are shared/models/dcgan.py (strided convolutions, batch norm, ReLU/tanh
and LeakyReLU 0.2, N(0, 0.02) init). Each step, on a batch of real images x and noise z ~ N(0, I):

    discriminator:  minimise BCE(D(x), 1) + BCE(D(G(z)), 0)
    generator:      minimise BCE(D(G(z)), 1)       (the non-saturating loss of Goodfellow et al. 2014)

with BCE on logits, and Adam at lr 2e-4, beta1 0.5 for both (the paper's values, in the config). Images
are scaled to [-1, 1], the range of the generator's tanh; MNIST is padded from 28x28 to 32x32 with black.

A fixed batch of noise is decoded into a sample grid after every epoch (media/ and W&B); at the end those
grids become one animation of training (`media/training`, MP4 or GIF), and a strip interpolates the latent
space between fixed pairs of z (`media/interpolations`). The samples'
FID and Inception-Score analogue (generative/metrics.py: a LeNet-FID on MNIST) are scored after every
epoch or at the end (`metrics.every`), on `metrics.num_samples` images, with the generator in eval mode
(batch norm from its running statistics, so a sample does not depend on its batch). The epoch order
depends on (seed, epoch) only, so a run stopped mid-epoch resumes exactly.

Both networks train through the shared Accelerator (`accel:`), which serves both optimizers; the two BCE
losses are taken in fp32 from the logits under any precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from generative.metrics import MetricsConfig, SampleScorer, check_metrics_config
from shared.config import RunConfig, register, require, require_positive
from shared.data import ImageData, epoch_order, load_dataset
from shared.errors import ConfigError
from shared.figures import as_batch, image_grid_figure, render, titled_image
from shared.media import write_video
from shared.models.dcgan import DCGANDiscriminator, DCGANGenerator
from shared.rng import stream
from shared.run import Run
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.loop import EpochClock, RunningMeans
from shared.train.optim import OptimConfig, make_optimizer

EPOCHS_PER_SECOND = 2  # the pace of the training animation, one fixed-noise grid a frame
INTERPOLATION_PAIRS, INTERPOLATION_STEPS = 6, 9  # rows and columns of the interpolation strip


@dataclass
class DCGANDataConfig:
    name: Literal["mnist", "cifar10"] = "mnist"
    root: Optional[str] = None  # folder holding <name>/; default $PIXLAB_DATA, then ~/.cache/pixlab/data
    download: bool = True
    pad: int = 2  # black pixels added on each side: the generator's sizes are powers of two (MNIST 28 -> 32)


@dataclass
class DCGANModelConfig:
    latent_dim: int = 100  # the paper's 100-dimensional uniform z; we draw it from N(0, I) as dcgan.torch does
    generator_width: int = 64  # channels at the generator's finest hidden layer (the paper's Figure 1: 128)
    discriminator_width: int = 64


@dataclass
class DCGANTrainConfig:
    epochs: int = 5
    batch_size: int = 128  # the paper's mini-batch size
    max_steps: Optional[int] = None  # stop earlier than `epochs` (smoke tests, budgets)


@dataclass
class DCGANConfig(RunConfig):
    algo: str = "dcgan"
    data: DCGANDataConfig = field(default_factory=DCGANDataConfig)
    model: DCGANModelConfig = field(default_factory=DCGANModelConfig)
    # The paper: Adam, lr 0.0002 (0.001 was too high), beta1 0.5 (0.9 oscillated and was unstable).
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=2e-4, betas=[0.5, 0.999]))
    train: DCGANTrainConfig = field(default_factory=DCGANTrainConfig)
    samples: int = 64  # the fixed-noise sample grid drawn every epoch
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.data.pad >= 0, "data.pad", "must be >= 0", self.data.pad)
        side = image_side(self)
        power_of_two = side >= 16 and side & (side - 1) == 0
        require(
            power_of_two,
            "data.pad",
            f"gives {side}x{side} images; DCGAN needs a power of two >= 16 (MNIST: pad 2, CIFAR-10: pad 0)",
            self.data.pad,
        )
        require_positive(self, "model.latent_dim", "model.generator_width", "model.discriminator_width", "train.epochs")
        require(
            self.train.batch_size > 1,
            "train.batch_size",
            "must be > 1 (batch norm needs two images)",
            self.train.batch_size,
        )
        require_positive(self, "optim.lr", "samples", optional=("train.max_steps",))
        check_metrics_config(self.metrics, self.data.name)


def to_tanh_range(images: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float (B, C, H + 2 pad, W + 2 pad) in [-1, 1], padded with -1 (black)."""
    x = images.float().div(127.5).sub(1)
    return F.pad(x, (pad,) * 4, value=-1.0) if pad else x


def image_side(cfg: DCGANConfig) -> int:
    """The side of the images the networks read and write: the dataset's, plus the padding."""
    return {"mnist": 28, "cifar10": 32}[cfg.data.name] + 2 * cfg.data.pad


def build_networks(cfg: DCGANConfig, channels: int, device: torch.device) -> tuple[DCGANGenerator, DCGANDiscriminator]:
    side = image_side(cfg)
    generator = DCGANGenerator(cfg.model.latent_dim, channels, side, cfg.model.generator_width).to(device)
    discriminator = DCGANDiscriminator(channels, side, cfg.model.discriminator_width).to(device)
    return generator, discriminator


def sampler(generator: DCGANGenerator):
    """sample(noise_generator, n) -> n generated images (n, C, H, W) in [0, 1], generator in eval mode."""

    @torch.no_grad()
    def sample(noise: torch.Generator, n: int) -> torch.Tensor:
        generator.eval()
        z = torch.randn(n, generator.latent_dim, generator=noise, device=noise.device)
        return generator(z).add(1).div(2)

    return sample


def train(cfg: DCGANConfig, run: Run) -> None:
    data: ImageData = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download).to(run.device)
    accel = Accelerator(cfg.accel, run.device)
    generator, discriminator = build_networks(cfg, data.train.images.shape[1], run.device)
    opt_g = make_optimizer(generator.parameters(), cfg.optim)
    opt_d = make_optimizer(discriminator.parameters(), cfg.optim)
    g_net, d_net = accel.prepare(generator), accel.prepare(discriminator)  # what the training step calls
    n_train = len(data.train)
    # Whole batches only: a last batch of a few images would give batch norm poor statistics.
    clock = EpochClock.from_config(cfg, steps_per_epoch=n_train // cfg.train.batch_size)
    objects = {"generator": generator, "discriminator": discriminator, "opt_g": opt_g, "opt_d": opt_d}
    scorer = (
        SampleScorer(cfg.metrics, data, cfg.data.root, run.device, cfg.seed) if cfg.metrics.network != "none" else None
    )
    fixed_noise = torch.randn(cfg.samples, cfg.model.latent_dim, generator=stream(cfg.seed, "fixed noise")).to(
        run.device
    )

    state = run.restore(objects) or {"step": 0}
    clock.start(state["step"])
    running = RunningMeans(["d_loss", "g_loss", "d_real", "d_fake"], run.device, state)
    # The Accelerator's state (the fp16 loss scale) rides in the counters: checkpoints from before DCGAN had
    # an Accelerator hold none, and must still resume.
    accel.load_state_dict(state.get("accel"))
    ones = torch.ones(cfg.train.batch_size, device=run.device)
    zeros = torch.zeros(cfg.train.batch_size, device=run.device)

    progress = tqdm(
        total=clock.total_steps, initial=clock.step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True
    )
    last = {}  # the metrics of the last evaluation, which the summary repeats
    while not clock.stop_now:
        order = epoch_order(n_train, cfg.seed, clock.epoch, run.device)
        for batch in range(clock.batch, clock.steps_per_epoch):
            index = order[batch * cfg.train.batch_size : (batch + 1) * cfg.train.batch_size]
            real = accel.to_input(to_tanh_range(data.train.images[index], cfg.data.pad))
            generator.train()
            discriminator.train()
            with accel.autocast():
                fake = g_net(torch.randn(len(real), cfg.model.latent_dim, device=run.device))
                real_logits = d_net(real).float()
                fake_logits = d_net(fake.detach()).float()  # no gradient into G from D's step
            d_loss = F.binary_cross_entropy_with_logits(real_logits, ones) + F.binary_cross_entropy_with_logits(
                fake_logits, zeros
            )
            # D's step leaves the fp16 loss scale alone: it is updated once per training step, after G's.
            accel.backward_step(d_loss, opt_d, discriminator.parameters(), update_scale=False)

            # Non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z))), whose gradient
            # vanishes while D rejects the samples confidently, early in training.
            with accel.autocast():
                g_logits = d_net(fake).float()
            g_loss = F.binary_cross_entropy_with_logits(g_logits, ones)
            accel.backward_step(g_loss, opt_g, generator.parameters())

            clock.tick()
            running.add(
                d_loss=d_loss, g_loss=g_loss, d_real=real_logits.sigmoid().mean(), d_fake=fake_logits.sigmoid().mean()
            )
            progress.update(1)

            if clock.log_now:
                metrics = running.pop()  # train/d_real: mean D(x); train/d_fake: mean D(G(z)) before D's step
                run.check_finite("train/d_loss", metrics["train/d_loss"], clock.step)
                run.check_finite("train/g_loss", metrics["train/g_loss"], clock.step)
                run.log(metrics | clock.pace(cfg.train.batch_size), clock.step)
                progress.set_postfix(d=f"{metrics['train/d_loss']:.3f}", g=f"{metrics['train/g_loss']:.3f}")
            if clock.epoch_ended or clock.finished:
                score = cfg.metrics.every == "epoch" or clock.finished
                last = end_of_epoch(cfg, run, generator, fixed_noise, scorer, clock.step, progress, score=score)
            clock.stopped = run.should_stop
            if clock.checkpoint_now:
                run.save(clock.step, objects, running.state() | {"accel": accel.state_dict()})
            if clock.stop_now:
                break
    progress.close()
    if clock.stopped:
        return

    if scorer is not None and clock.step != last.get(
        "step"
    ):  # a finished run resumed: nothing was scored in this process
        last = {"step": clock.step} | scorer.score(sampler(generator))
    summary = {"train/steps": clock.step} | {k: v for k, v in last.items() if k != "step"}
    if scorer is not None:
        summary |= scorer.reference(data)
    log_training_animation(cfg, run, clock.step, clock.steps_per_epoch)
    log_interpolations(cfg, run, generator, clock.step)
    run.summary(summary)
    scores = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if k.startswith("samples/"))
    print(f"{cfg.name}: {clock.step} steps; {scores}")


def end_of_epoch(
    cfg: DCGANConfig,
    run: Run,
    generator: DCGANGenerator,
    fixed_noise: torch.Tensor,
    scorer,
    step: int,
    progress,
    score: bool,
) -> dict:
    """Log the fixed-noise sample grid and, when `score`, the samples' FID and IS; return {'step': step, **scores}."""
    generator.eval()
    with torch.no_grad():
        run.log_images("samples", generator(fixed_noise).add(1).div(2), step)  # the stable W&B media key
    metrics = {}
    if scorer is not None and score:
        metrics = scorer.score(sampler(generator))
        run.log(metrics, step)
        progress.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return {"step": step} | metrics


def training_frames(media: Path, last_step: int, steps_per_epoch: int, title: str) -> list[np.ndarray]:
    """The fixed-noise grids in `media` (samples-<step>.png, one per epoch, those of earlier sessions of a resumed
    run too) up to `last_step`, in order, each titled with its epoch: RGB frames (H, W, 3) uint8 of one size."""
    from PIL import Image

    grids = sorted((int(p.stem.rsplit("-", 1)[1]), p) for p in media.glob("samples-*.png"))
    frames = []
    for step, path in grids:
        if step <= last_step:
            rgb = np.asarray(Image.open(path).convert("RGB"))
            frames.append(render(titled_image(rgb, f"{title}, epoch {step / steps_per_epoch:.3g}", f"step {step}")))
    return frames


def log_training_animation(cfg: DCGANConfig, run: Run, step: int, steps_per_epoch: int) -> None:
    """The epochs' fixed-noise grids, one a frame, as `media/training` (MP4 or GIF in media/)."""
    media = run.dir / "media"
    frames = training_frames(media, step, steps_per_epoch, f"{cfg.name}: fixed-noise samples")
    if frames:
        run.log_video(
            "media/training", write_video(frames, media / f"media_training-{step:09d}", EPOCHS_PER_SECOND), step
        )


def slerp(start: torch.Tensor, end: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) between rows of start and end (P, D) at weights (S,) in [0, 1]
    -> (P, S, D). Linear where the two are (nearly) parallel, where the arc is a line."""
    w = weights.view(1, -1, 1)
    a, b = start[:, None], end[:, None]
    omega = torch.acos(F.cosine_similarity(start, end, dim=1).clamp(-1, 1)).view(-1, 1, 1)  # the angle between
    arc = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega).clamp_min(1e-7)
    return torch.where(omega > 1e-4, arc, (1 - w) * a + w * b)


@torch.no_grad()
def log_interpolations(cfg: DCGANConfig, run: Run, generator: DCGANGenerator, step: int) -> None:
    """Samples along the great circle between fixed pairs of z, as `media/interpolations`: spherical, not linear,
    because a z ~ N(0, I) lies near the sphere of radius sqrt(latent_dim), which the generator learned, and a
    straight line's midpoint falls well inside it (norm / sqrt(2)), where its samples fade (White 2016)."""
    noise = stream(cfg.seed, "interpolation ends")
    ends = torch.randn(2, INTERPOLATION_PAIRS, cfg.model.latent_dim, generator=noise).to(run.device)
    weights = torch.linspace(0, 1, INTERPOLATION_STEPS, device=run.device)
    path = slerp(ends[0], ends[1], weights).flatten(0, 1)  # (pairs * steps, latent_dim)
    generator.eval()
    images = generator(path).add(1).div(2)  # (pairs * steps, C, H, W) in [0, 1]
    figure = image_grid_figure(
        images,
        f"{cfg.name}: spherical interpolation between fixed z pairs, step {step}",
        columns=INTERPOLATION_STEPS,
        column_titles=[f"t = {t:.3g}" for t in weights.tolist()],
        row_labels=[f"pair {i + 1}" for i in range(INTERPOLATION_PAIRS)],
        tile_px=max(64, 2 * images.shape[-1]),
    )
    run.log_images("media/interpolations", as_batch(render(figure)), step, nrow=1)


def evaluate(cfg: DCGANConfig, checkpoint: dict) -> dict:
    """The FID and IS analogue of `metrics.num_samples` samples of the checkpoint's generator."""
    if cfg.metrics.network == "none":
        raise ConfigError(
            "this run has metrics.network='none': pixlab eval of a DCGAN scores its samples, and there is no feature network"
        )
    device = select_device(cfg.device)
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download).to(device)
    generator, _ = build_networks(cfg, data.train.images.shape[1], device)
    generator.load_state_dict(checkpoint["state"]["generator"])
    scorer = SampleScorer(cfg.metrics, data, cfg.data.root, device, cfg.seed)
    return {"step": checkpoint["step"]} | scorer.score(sampler(generator))


register(
    DCGANConfig,
    train,
    evaluate,
    metrics=[
        {"name": "samples/fid_lenet", "goal": "minimize"},  # comparable between pixlab runs only
        {"name": "samples/is_lenet", "goal": "maximize"},
        {"name": "train/d_loss"},
        {"name": "train/g_loss"},
    ],
    media=["samples", "media/training", "media/interpolations"],
)
