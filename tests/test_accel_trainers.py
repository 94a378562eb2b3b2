"""Every trainer that gained an `accel:` section runs through the shared Accelerator: a few steps with
accel.precision=bf16 and accel.channels_last=true through `pixlab train` (in process, tiny sizes), watched
from inside the model's forward: autocast on at bf16 in every training forward, and a convolution's weights
(one with several input channels, so that the two layouts differ) in channels_last. DCGAN's fp16 run shows
that one loss scale serves its two optimizers, and that it goes through a checkpoint and a resume."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, SHARED_DATA, only_run_dir
from exact_resume import assert_resume_is_exact

from generative.vae import VAE
from rl.ram import RecurrentAttention
from rl.reinforce import FeedForwardPolicy
from shared.cli import main
from shared.models.dcgan import DCGANDiscriminator, DCGANGenerator
from shared.models.glimpse import GlimpseAgent
from shared.run import latest_checkpoint, load_checkpoint

FAST = ["accel.precision=bf16", "accel.channels_last=true", "tracking.wandb=disabled"]
MNIST = [f"data.root={SHARED_DATA}"]  # the real MNIST files; the cases that read them skip without them
needs_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "mnist" / "train-images-idx3-ubyte.gz").exists(),
    reason=f"the real MNIST files are not in {SHARED_DATA / 'mnist'}",
)


def watch_forward(monkeypatch, cls, conv=None) -> list[tuple]:
    """Patch cls.forward to record, at each call in training mode, (the CPU autocast dtype or None when autocast
    is off, whether the weight `conv(module)` is channels_last and not NCHW; None without `conv`)."""
    seen = []
    forward = cls.forward

    def watched(self, *args, **kwargs):
        if self.training:
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            nhwc = None
            if conv is not None:
                weight = conv(self)
                nhwc = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
            seen.append((dtype, nhwc))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", watched)
    return seen


TRAINERS = {
    "vae": (
        "vae/binarized_mnist.yaml",
        [
            *MNIST,
            "train.max_steps=2",
            "train.batch_size=16",
            "metrics.network=none",
            "eval.at_end=false",
            "media.samples=4",
        ],
        [(VAE, lambda vae: vae.encoder.conv2.weight)],
    ),
    "dcgan": (
        "dcgan/mnist.yaml",
        [
            *MNIST,
            "train.max_steps=2",
            "train.batch_size=8",
            "metrics.network=none",
            "model.generator_width=8",
            "model.discriminator_width=8",
        ],
        [(DCGANDiscriminator, lambda d: d.net[2].weight), (DCGANGenerator, None)],  # net[2]: the second convolution
    ),
    "ram": (
        "ram/mnist.yaml",
        [
            f"task.root={SHARED_DATA}",
            "train.max_steps=2",
            "train.batch_size=8",
            "task.test_limit=16",
            "train.eval_samples=1",
            "model.hidden=16",
        ],
        [(RecurrentAttention, None)],  # no convolutions: channels_last leaves it as it is
    ),
    "reinforce-mlp": (
        "reinforce/cartpole.yaml",
        ["total_steps=1", "env.num_envs=2", "agent.batch_episodes=1"],
        [(FeedForwardPolicy, None)],
    ),
    "reinforce-nature_cnn": (
        "reinforce/breakout_glimpses.yaml",
        [
            "policy.kind=nature_cnn",
            "total_steps=1",
            "env.num_envs=1",
            "agent.batch_episodes=1",
            "env.max_episode_frames=200",
        ],
        [(FeedForwardPolicy, lambda policy: policy.torso.convs[2].weight)],
    ),
    "reinforce-glimpse": (
        "reinforce/breakout_glimpses.yaml",
        [
            "policy.glimpse.hidden=16",
            "total_steps=1",
            "env.num_envs=1",
            "agent.batch_episodes=1",
            "env.max_episode_frames=200",
        ],
        [(GlimpseAgent, None)],
    ),
}


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=needs_mnist) if not name.startswith("reinforce") else name for name in TRAINERS]
)
def test_bf16_and_channels_last_reach_every_training_forward(tmp_path, monkeypatch, name):
    config, overrides, watched = TRAINERS[name]
    seen = {cls: watch_forward(monkeypatch, cls, conv) for cls, conv in watched}
    assert main(["train", str(CONFIGS / config), *overrides, *FAST, f"runs_dir={tmp_path}"]) == 0
    for cls, conv in watched:
        assert seen[cls], f"{cls.__name__}.forward was never called in training mode"
        assert set(seen[cls]) == {(torch.bfloat16, None if conv is None else True)}, (cls.__name__, set(seen[cls]))


@needs_mnist
def test_dcgan_fp16_updates_one_loss_scale_per_step_for_both_optimizers_and_it_survives_a_resume(tmp_path):
    overrides = [
        *MNIST,
        "train.max_steps=3",
        "train.batch_size=8",
        "metrics.network=none",
        "model.generator_width=8",
        "model.discriminator_width=8",
        "accel.precision=fp16",
    ]
    assert_resume_is_exact(
        str(CONFIGS / "dcgan" / "mnist.yaml"), overrides, tmp_path, stop_at=2, states=("generator", "discriminator")
    )
    straight = load_checkpoint(latest_checkpoint(only_run_dir(tmp_path / "straight")))["counters"]["accel"]["scaler"]
    resumed = load_checkpoint(latest_checkpoint(only_run_dir(tmp_path / "stopped")))["counters"]["accel"]["scaler"]
    # At torch's initial 2^16 the discriminator's fp16 gradients overflow in these first steps: the one update of
    # each training step halves the scale (2^16 / 2^3) and counts no clean step. Updated after each optimizer,
    # the scale would also have counted the generator's three clean steps; restarted at the resume, it would
    # stand at 2^16 / 2^1.
    assert straight["scale"] == resumed["scale"] == 8192.0
    assert straight["_growth_tracker"] == resumed["_growth_tracker"] == 0
