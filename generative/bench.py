"""`pixlab bench pixelcnn`: the cached sampler (generative/sampling.py) beside the naive one, same model, same seed;
`pixlab bench iwae`: the VAE's IWAE bound (k = 5000, as `pixlab reproduce vae-bmnist` scores it) at several
decoding chunk sizes; and the `pixlab bench train` rows of the VAE, DCGAN and PixelCNN (shared/cli/bench.py says
how those are timed).

Both samplers draw one batch of binary 28x28 images from a PixelCNN and a Gated PixelCNN of the default
config's size (generative/pixelcnn.py, PixelCNNModelConfig), at their random initialisation: the time per forward
pass does not depend on the weights' values. Each sampler is timed once, end to end, and the two batches
are compared sub-pixel by sub-pixel.
"""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from generative.dcgan import build_networks, to_tanh_range
from generative.pixelcnn import PixelCNNModelConfig, build_model, nll_nats
from generative.sampling import sample
from generative.vae import VAE, elbo_terms, test_iwae
from shared.config import REPO, load_config
from shared.data.binarize import binarize
from shared.data.tensors import ImageData
from shared.machine import describe_machine, format_machine
from shared.train.accel import Accelerator
from shared.train.device import select_device, synchronize
from shared.train.reference import TrainCase, plain_batches, plain_optimizer, timed_loop


def bench_pixelcnn(batch_size: int = 16, image_size: int = 28, device: str = "auto", seed: int = 0) -> dict:
    target = select_device(device)
    shape = (1, image_size, image_size)
    results = []
    for kind in ("pixelcnn", "gated"):
        cfg = PixelCNNModelConfig(kind=kind)
        torch.manual_seed(seed)
        model = build_model(cfg, channels=1, levels=2, num_classes=10).to(target)
        timings, images = {}, {}
        for name, cached in (("naive", False), ("cached", True)):
            synchronize(target)
            start = time.perf_counter()
            images[name] = sample(model, batch_size, shape, seed, cached=cached)
            synchronize(target)
            timings[name] = time.perf_counter() - start
        mismatched = int((images["naive"] != images["cached"]).sum())
        results.append(
            {
                "kind": kind,
                "model": f"hidden {cfg.hidden}, {cfg.layers} layers after the first, kernels {cfg.first_kernel}/{cfg.kernel}, head {cfg.head_hidden}",
                "parameters": sum(p.numel() for p in model.parameters()),
                "naive_s": round(timings["naive"], 4),
                "cached_s": round(timings["cached"], 4),
                "speedup": round(timings["naive"] / timings["cached"], 2),
                "samples_match": mismatched == 0,
                "mismatched_subpixels": mismatched,
            }
        )
    return {
        "benchmark": "pixelcnn sampling",
        "images": f"{batch_size} x {shape} binary, seed {seed}",
        "batch_size": batch_size,
        "machine": describe_machine(target),
        "precision": "fp32",  # both samplers
        "results": results,
    }


def format_report(report: dict) -> str:
    lines = [
        f"pixelcnn sampling bench: {report['images']}, fp32; {format_machine(report['machine'])}",
        f"{'model':<9} {'parameters':>10} {'naive s':>9} {'cached s':>9} {'speedup':>8}  samples",
    ]
    for r in report["results"]:
        same = "identical" if r["samples_match"] else f"{r['mismatched_subpixels']} sub-pixels differ"
        lines.append(
            f"{r['kind']:<9} {r['parameters']:>10} {r['naive_s']:>9.2f} {r['cached_s']:>9.2f} {r['speedup']:>7.1f}x  {same}"
        )
        lines.append(f"          ({r['model']})")
    return "\n".join(lines)


IWAE_K = 5000  # importance samples per image in `bench iwae`, as `pixlab reproduce vae-bmnist` scores the test set


def bench_iwae(
    images: int = 12, chunks: Sequence[int] = (8192, 512), repeats: int = 3, device: str = "auto", seed: int = 0
) -> dict:
    """The IWAE bound of configs/vae/binarized_mnist.yaml's VAE (its layout, k = 5000) on `images` random binary
    images at each chunk size, after one untimed warm-up image per chunk; the chunks are timed in turn, `repeats`
    rounds, and each one's median is reported. Below 2k = 10,000 a chunk holds one image's latents, drawn from
    that image's own generator whatever the chunk, so the bounds must agree (to 1e-3 nats: only the order of
    the sums differs). The time does not depend on the weights, so the VAE stays at its random initialisation;
    the projection to 10,000 images is the median time per image times 10,000."""
    target = select_device(device)
    _, cfg = load_config(
        REPO / "configs/vae/binarized_mnist.yaml", [f"eval.iwae_k={IWAE_K}", "eval.test_images=null", f"seed={seed}"]
    )
    torch.manual_seed(seed)
    vae = VAE(1, 28, cfg.model.latent_dim, cfg.model.width, cfg.data.likelihood)
    vae = Accelerator(cfg.accel, target).prepare(vae, in_place=True).eval()
    binary = (torch.rand(images + 1, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) < 0.3).to(target)

    def bound(chunk: int, test: torch.Tensor) -> float:
        cfg.eval.chunk = chunk
        with torch.inference_mode():
            return test_iwae(vae, binary_test(test), cfg)["test/nll_nats"]

    for chunk in chunks:
        bound(chunk, binary[:1])  # warm-up: oneDNN picks its kernels for these shapes
    seconds, bounds = {c: [] for c in chunks}, {}
    for _ in range(repeats):
        for chunk in chunks:
            synchronize(target)
            start = time.perf_counter()
            bounds[chunk] = bound(chunk, binary[1:])
            synchronize(target)
            seconds[chunk].append(time.perf_counter() - start)
    results = [
        {
            "chunk": chunk,
            "images_per_s": round(images / statistics.median(seconds[chunk]), 3),
            "hours_for_10000": round(10_000 * statistics.median(seconds[chunk]) / images / 3600, 2),
            "nll_nats": bounds[chunk],
        }
        for chunk in chunks
    ]
    return {
        "benchmark": "vae iwae bound",
        "images": f"{images} random binary 28x28, k = {cfg.eval.iwae_k}, seed {seed}, median of {repeats}",
        "model": f"conv VAE, latent {cfg.model.latent_dim}, width {cfg.model.width}, channels_last {cfg.accel.channels_last}",
        "threads": torch.get_num_threads(),
        "machine": describe_machine(target),
        "precision": "fp32",
        "bounds_agree": max(bounds.values()) - min(bounds.values()) < 1e-3,
        "results": results,
    }


def binary_test(images: torch.Tensor) -> SimpleNamespace:
    """What test_iwae reads of VAEData, for binary uint8 images already made."""
    return SimpleNamespace(test=images, bernoulli=True, inputs=lambda b: (b.float(), b.float()))


def format_iwae(report: dict) -> str:
    lines = [
        f"iwae bench: {report['images']}; {report['model']}; {report['threads']} threads, fp32; {format_machine(report['machine'])}",
        f"{'chunk':>6} {'images/s':>9} {'h for 10,000':>13} {'bound, nats':>12}",
    ]
    for r in report["results"]:
        lines.append(f"{r['chunk']:>6} {r['images_per_s']:>9.2f} {r['hours_for_10000']:>13.2f} {r['nll_nats']:>12.4f}")
    lines.append("bounds agree across chunks" if report["bounds_agree"] else "BOUNDS DIFFER across chunks")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- pixlab bench train rows


def vae_reference(cfg, data: ImageData, device: torch.device) -> Callable[[int], float]:
    """The conv VAE on images binarized once: the negative ELBO with one reparameterised sample."""
    vae = VAE(1, 28, cfg.model.latent_dim, cfg.model.width, cfg.data.likelihood).to(device)
    optimizer = plain_optimizer(vae.parameters(), cfg.optim)
    batches = plain_batches([binarize(data.train.images.cpu(), cfg.seed).float()], cfg.train.batch_size, device)

    def step() -> None:
        (x,) = next(batches)
        log_px, kl = elbo_terms(vae, x, x, torch.randn(len(x), cfg.model.latent_dim, device=device))
        loss = (kl - log_px).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed_loop(step, device)


def dcgan_reference(cfg, data: ImageData, device: torch.device) -> Callable[[int], float]:
    """pytorch/examples' DCGAN step: D on a real and a fake batch, then G through D, both with BCE on logits."""
    generator, discriminator = build_networks(cfg, 1, device)
    opt_g = plain_optimizer(generator.parameters(), cfg.optim)
    opt_d = plain_optimizer(discriminator.parameters(), cfg.optim)
    batches = plain_batches([to_tanh_range(data.train.images.cpu(), cfg.data.pad)], cfg.train.batch_size, device)
    ones = torch.ones(cfg.train.batch_size, device=device)
    zeros = torch.zeros(cfg.train.batch_size, device=device)

    def step() -> None:
        (real,) = next(batches)
        fake = generator(torch.randn(len(real), cfg.model.latent_dim, device=device))
        d_loss = F.binary_cross_entropy_with_logits(discriminator(real), ones) + F.binary_cross_entropy_with_logits(
            discriminator(fake.detach()), zeros
        )
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()

    return timed_loop(step, device)


def pixelcnn_reference(cfg, data: ImageData, device: torch.device) -> Callable[[int], float]:
    """PixelCNN on images binarized once: the NLL per sub-pixel, unconditional."""
    model = build_model(cfg.model, 1, 2, data.num_classes).to(device)
    optimizer = plain_optimizer(model.parameters(), cfg.optim)
    batches = plain_batches([binarize(data.train.images.cpu(), cfg.seed)], cfg.train.batch_size, device)

    def step() -> None:
        (x,) = next(batches)
        loss = nll_nats(model(x, None), x).mean() / x[0].numel()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed_loop(step, device)


TRAIN_CASES = {
    "vae": TrainCase(
        "vae",
        "vae/binarized_mnist.yaml",
        "generative.vae",
        60,
        vae_reference,
        ("eval.at_end=false", "metrics.network=none"),
    ),
    "dcgan": TrainCase("dcgan", "dcgan/mnist.yaml", "generative.dcgan", 30, dcgan_reference, ("metrics.network=none",)),
    "pixelcnn": TrainCase(
        "pixelcnn", "pixelcnn/binarized_mnist.yaml", "generative.pixelcnn", 30, pixelcnn_reference, ("sample.count=1",)
    ),
}
