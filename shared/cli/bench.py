"""`pixlab bench classify`: training images/s with pixlab's device-resident data path, beside a plain
PyTorch `DataLoader(TensorDataset)` loop on the same model, in the same process.

Both loops run the same model (same initial weights), the same optimizer and the same step; only the
data path differs:
- pixlab: uint8 images held on the device, a permutation indexed one batch at a time, the batch turned
  into normalised floats on the device (`ImageData.prepare`);
- plain: the images normalised to float32 once up front, served by `DataLoader(TensorDataset(x, y),
  batch_size, shuffle=True)`, which indexes and collates sample by sample in Python.
The two are timed in alternation, `repeats` times each after a warm-up, and the medians are reported.
The data paths are also timed alone (batches produced, no model), since on a CPU the model's step can
dwarf either of them. The images are random uint8 with the dataset's shape: speed does not depend on
their content.

`pixlab bench train` (the second half of this file) times whole trainers instead: pixlab's trainer beside a
pytorch/examples-style loop, for LeNet-5 here and, through the rows that rl/bench.py and generative/bench.py
define (this floor imports neither), RAM, the VAE, DCGAN and PixelCNN. `bench classify` stays as it is: it
isolates the data path, which `bench train` measures only as part of the whole.
"""

from __future__ import annotations

import copy
import importlib
import statistics
from typing import Callable, Iterable, Iterator, Sequence
from unittest import mock

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from shared.config import ALGORITHMS, REPO, load_config
from shared.data.tensors import ImageData, Split, epoch_order
from shared.machine import describe_machine, format_machine
from shared.models import build_model
from shared.train.accel import resolve_precision
from shared.train.device import select_device
from shared.train.reference import TrainCase, plain_batches, plain_optimizer, throwaway_run, timed_loop

# model -> (dataset it stands for, image shape, pad, number of images, timed steps)
CASES = {
    "lenet5": ("mnist", (1, 28, 28), 2, 60_000, 150),
    "resnet20": ("cifar10", (3, 32, 32), 0, 50_000, 12),
}


def bench_classify(
    models: Iterable[str] = ("lenet5", "resnet20"),
    batch_size: int = 128,
    repeats: int = 3,
    device: str = "auto",
    steps_scale: float = 1.0,
) -> dict:
    target = select_device(device)
    results = []
    for name in models:
        dataset, shape, pad, count, steps = CASES[name]
        steps = max(2, int(steps * steps_scale))
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (count, *shape), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=generator)
        data = ImageData(
            dataset,
            Split(images, labels),
            Split(images[:1000], labels[:1000]),
            10,
            (0.5,) * shape[0],
            (0.25,) * shape[0],
            pad,
        ).to(target)

        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=shape[0]).to(target)
        ours_model, plain_model = model, copy.deepcopy(model)
        ours = _loop(ours_model, _pixlab_batches(data, batch_size, target), target)
        plain = _loop(plain_model, _dataloader_batches(data, batch_size, target), target)

        ours(max(2, steps // 10))  # warm-up: allocator, kernels, the DataLoader's first iterator
        plain(max(2, steps // 10))
        ours_rates, plain_rates = [], []
        for _ in range(repeats):
            ours_rates.append(steps * batch_size / ours(steps))
            plain_rates.append(steps * batch_size / plain(steps))
        ours_rate, plain_rate = statistics.median(ours_rates), statistics.median(plain_rates)
        data_steps = steps * 20
        ours_data = statistics.median(
            _batches_per_s(_pixlab_batches(data, batch_size, target), data_steps, target) for _ in range(repeats)
        )
        plain_data = statistics.median(
            _batches_per_s(_dataloader_batches(data, batch_size, target), data_steps, target) for _ in range(repeats)
        )
        results.append(
            {
                "model": name,
                "data": f"{dataset}-shaped {shape} uint8, {count} images",
                "batch_size": batch_size,
                "steps_timed": steps,
                "pixlab_images_per_s": round(ours_rate, 1),
                "dataloader_images_per_s": round(plain_rate, 1),
                "ratio": round(ours_rate / plain_rate, 3),
                "pixlab_runs": [round(r, 1) for r in ours_rates],
                "dataloader_runs": [round(r, 1) for r in plain_rates],
                "data_path_only": {
                    "pixlab_batches_per_s": round(ours_data, 1),
                    "dataloader_batches_per_s": round(plain_data, 1),
                    "ratio": round(ours_data / plain_data, 3),
                },
            }
        )
    return {
        "benchmark": "classify",
        "machine": describe_machine(target),
        "precision": {"pixlab": "fp32", "dataloader": "fp32"},  # this bench compares data paths: both loops fp32
        "repeats": repeats,
        "results": results,
    }


def _pixlab_batches(data: ImageData, batch_size: int, device: torch.device) -> Iterator[tuple]:
    epoch = 0
    while True:
        order = epoch_order(len(data.train), 0, epoch, device)
        for images, labels in data.train.batches(batch_size, order):
            yield data.prepare(images), labels
        epoch += 1


def _dataloader_batches(data: ImageData, batch_size: int, device: torch.device) -> Iterator[tuple]:
    floats = torch.cat([data.prepare(images) for images, _ in data.train.batches(4096)]).cpu()
    loader = DataLoader(TensorDataset(floats, data.train.labels.cpu()), batch_size=batch_size, shuffle=True)
    while True:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _batches_per_s(batches: Iterator[tuple], steps: int, device: torch.device) -> float:
    next(batches)  # the first batch builds the iterator (and the DataLoader's float copy)
    return steps / timed_loop(lambda: next(batches), device)(steps)


def _loop(model: nn.Module, batches: Iterator[tuple], device: torch.device) -> Callable[[int], float]:
    """A function that trains `steps` steps from `batches` and returns the seconds they took."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_loop(step, device)


def format_table(report: dict) -> str:
    lines = [
        f"classify bench, median of {report['repeats']}: {format_machine(report['machine'])}",
        f"{'model':<10} {'batch':>5} {'pixlab img/s':>13} {'DataLoader img/s':>17} {'ratio':>6}   "
        f"{'data path alone: pixlab batch/s':>32} {'DataLoader batch/s':>19} {'ratio':>6}",
    ]
    for r in report["results"]:
        d = r["data_path_only"]
        lines.append(
            f"{r['model']:<10} {r['batch_size']:>5} {r['pixlab_images_per_s']:>13.0f} {r['dataloader_images_per_s']:>17.0f} {r['ratio']:>6.2f}   "
            f"{d['pixlab_batches_per_s']:>32.0f} {d['dataloader_batches_per_s']:>19.0f} {d['ratio']:>6.2f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- pixlab bench train
# Training images/s of a model under pixlab's own trainer (`train(cfg, run)` from its config: the device-resident
# data path, the Accelerator with the config's precision and layout, fused optimizers) beside a plain loop written
# the way pytorch/examples writes it: a DataLoader over float32 tensors, NCHW, fp32, torch.optim with its default
# implementation, the same model (built by the trainer's own builder) and batch size, the same loss. Both run in
# this process, alternating, `repeats` times each; the medians are reported.
#
# Data: random MNIST-shaped uint8 images (60,000 train, 500 test) stand in for MNIST by swapping the trainer
# module's `load_dataset` (speed does not depend on pixel values; no download needed). The trainer runs
# `steps` optimizer steps and logs images/s every steps / 5; the first window (allocations, compile) is dropped.
# Its end-of-run evaluation is on the 500 test images and is not timed.


def synthetic_mnist(pad: int = 0, train: int = 60_000, test: int = 500) -> ImageData:
    """Random uint8 digits of MNIST's shape (N, 1, 28, 28) with labels 0..9, MNIST's mean and std."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (train + test, 1, 28, 28), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (train + test,), generator=generator)
    return ImageData(
        "mnist",
        Split(images[:train], labels[:train]),
        Split(images[train:], labels[train:]),
        10,
        (0.1307,),
        (0.3081,),
        pad,
    )


def lenet5_reference(cfg, data: ImageData, device: torch.device) -> Callable[[int], float]:
    """LeNet-5 on normalised, padded float images: cross-entropy, the config's optimizer."""
    model = build_model("lenet5", data.num_classes, in_channels=1).to(device)
    optimizer = plain_optimizer(model.parameters(), cfg.optim)
    floats = torch.cat([data.prepare(images) for images, _ in data.train.batches(4096)])
    batches = plain_batches([floats, data.train.labels], cfg.train.batch_size, device)

    def step() -> None:
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed_loop(step, device)


LENET5 = TrainCase("lenet5", "classify/lenet5_mnist.yaml", "shared.classify", 100, lenet5_reference)


def bench_train(cases: Sequence[TrainCase], repeats: int = 3, device: str = "auto", steps_scale: float = 1.0) -> dict:
    """pixlab's trainer beside the reference loop for each case -> {machine, repeats, results: [...]}."""
    target = select_device(device)
    results = []
    for case in cases:
        steps = max(10, int(case.steps * steps_scale))
        _, cfg = load_config(REPO / "configs" / case.config, _bench_overrides(case, target, steps))
        data = synthetic_mnist(getattr(getattr(cfg, "data", None), "pad", 0))
        reference = case.reference(cfg, data.to(target), target)
        reference(2)  # warm-up: the DataLoader's first iterator, the allocator
        ours, plain = [], []
        for _ in range(repeats):
            ours.append(_trainer_images_per_s(case, cfg, target, data))
            plain.append(steps * cfg.train.batch_size / reference(steps))
        ours_rate, plain_rate = statistics.median(ours), statistics.median(plain)
        accel = cfg.accel
        results.append(
            {
                "model": case.model,
                "config": f"configs/{case.config}",
                "batch_size": cfg.train.batch_size,
                "steps_timed": steps,
                "pixlab_images_per_s": round(ours_rate, 1),
                "reference_images_per_s": round(plain_rate, 1),
                "ratio": round(ours_rate / plain_rate, 3),
                "pixlab_runs": [round(r, 1) for r in ours],
                "reference_runs": [round(r, 1) for r in plain],
                "pixlab_precision": resolve_precision(accel.precision, target),
                "pixlab_settings": f"channels_last={accel.channels_last}, compile={accel.compile}, optimizer {cfg.optim.name} (fused)",
                "reference_precision": "fp32",
                "reference_settings": f"NCHW, DataLoader(TensorDataset), torch.optim {cfg.optim.name} (default implementation)",
            }
        )
    return {
        "benchmark": "train",
        "machine": describe_machine(target),
        "repeats": repeats,
        "data": "random MNIST-shaped uint8",
        "results": results,
    }


def _bench_overrides(case: TrainCase, device: torch.device, steps: int) -> list[str]:
    return [
        f"device={device.type}",
        f"train.max_steps={steps}",
        f"tracking.log_every={max(1, steps // 5)}",
        "tracking.wandb=disabled",
        f"checkpoint.every={10 * steps}",
        *case.overrides,
    ]


def _trainer_images_per_s(case: TrainCase, cfg, device: torch.device, data: ImageData) -> float:
    """One run of the case's trainer on the synthetic data -> its median logged images/s after the first window."""
    module = importlib.import_module(case.module)
    with mock.patch.object(module, "load_dataset", lambda *args, **kwargs: data):
        records = throwaway_run(cfg, ALGORITHMS[cfg.algo].train, ["pixlab", "bench", "train", case.model])
    rates = [r["train/images_per_s"] for r in records if "train/images_per_s" in r]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def format_train(report: dict) -> str:
    lines = [
        f"train bench: {report['data']}, median of {report['repeats']}; {format_machine(report['machine'])}",
        f"{'model':<9} {'batch':>5} {'pixlab img/s':>13} {'reference img/s':>16} {'ratio':>6}  pixlab precision, settings",
    ]
    for r in report["results"]:
        lines.append(
            f"{r['model']:<9} {r['batch_size']:>5} {r['pixlab_images_per_s']:>13.0f} {r['reference_images_per_s']:>16.0f} {r['ratio']:>6.2f}  "
            f"{r['pixlab_precision']}, {r['pixlab_settings']}"
        )
    lines.append("reference: fp32, NCHW, DataLoader(TensorDataset), torch.optim default implementation")
    return "\n".join(lines)
