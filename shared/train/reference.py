"""The pieces of a `pixlab bench train` row: the case it times, and a reference training loop written the way
pytorch/examples writes one (a DataLoader over float NCHW tensors, torch's default optimizer), timed on its own.

shared/cli/bench.py puts the rows together; each trainer's row lives beside it (rl/bench.py, generative/bench.py),
so the trainers' floors never import the command that runs them.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, TensorDataset

from shared.run import Run
from shared.tracking import read_metrics
from shared.train.device import synchronize


@dataclass
class TrainCase:
    """One row of `pixlab bench train`: a trainer's config and the reference loop that trains the same model."""

    model: str  # the row's name
    config: str  # under configs/
    module: str  # the trainer's module, whose `load_dataset` is swapped for synthetic MNIST
    steps: int  # timed steps at steps_scale 1 (about 10 s a side on 2 CPU cores)
    reference: Callable  # reference(cfg, data: ImageData, device) -> run(steps) -> seconds
    overrides: tuple[str, ...] = ()  # what keeps the run to its timed steps: no sample metrics, few test images


def plain_batches(tensors: Sequence[torch.Tensor], batch_size: int, device: torch.device) -> Iterator[list]:
    """pytorch/examples' input pipeline: DataLoader(TensorDataset(...), shuffle=True), each batch moved to the device."""
    loader = DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True, drop_last=True)
    while True:
        for batch in loader:
            yield [t.to(device, non_blocking=True) for t in batch]


def timed_loop(step: Callable[[], None], device: torch.device) -> Callable[[int], float]:
    """run(steps) -> the seconds `steps` calls of `step` took (device work included)."""

    def run(steps: int) -> float:
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        return time.perf_counter() - start

    return run


def plain_optimizer(parameters, cfg) -> torch.optim.Optimizer:
    """The config's optimizer as pytorch/examples builds it: torch's default implementation, no parameter groups."""
    if cfg.name in ("adam", "adamw"):
        kind = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return kind(parameters, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    raise ValueError(f"no plain optimizer for {cfg.name!r}")


def throwaway_run(cfg, train: Callable, argv: list[str]) -> list[dict]:
    """Train `cfg` in a temporary run folder, its printed lines sent to stderr (a bench's stdout carries its
    report alone) -> the records of the run's metrics.jsonl."""
    with tempfile.TemporaryDirectory() as folder:
        cfg.runs_dir = folder
        with Run.create(cfg, argv=argv) as run, contextlib.redirect_stdout(sys.stderr):
            train(cfg, run)
        return read_metrics(run.dir / "metrics.jsonl")
