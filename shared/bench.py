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
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from shared.data.tensors import ImageData, Split, epoch_order
from shared.models import build_model
from shared.train.device import select_device

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
        data = ImageData(dataset, Split(images, labels), Split(images[:1000], labels[:1000]), 10, (0.5,) * shape[0], (0.25,) * shape[0], pad).to(target)

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
        ours_data = statistics.median(_batches_per_s(_pixlab_batches(data, batch_size, target), data_steps, target) for _ in range(repeats))
        plain_data = statistics.median(_batches_per_s(_dataloader_batches(data, batch_size, target), data_steps, target) for _ in range(repeats))
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
        "device": str(target),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
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
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    _sync(device)
    return steps / (time.perf_counter() - start)


def _loop(model: nn.Module, batches: Iterator[tuple], device: torch.device) -> Callable[[int], float]:
    """A function that trains `steps` steps from `batches` and returns the seconds they took."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def run(steps: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        return time.perf_counter() - start

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def format_table(report: dict) -> str:
    lines = [
        f"classify bench on {report['device']} ({report['processor']}, {report['threads']} threads, torch {report['torch']}), "
        f"median of {report['repeats']}",
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
