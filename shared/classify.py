"""Supervised image classification: the course's baseline trainer, and later the feature extractor that
scores generative samples.

    pixlab train configs/classify/lenet5_mnist.yaml

The whole dataset sits on the training device as uint8 tensors; each epoch is a permutation that
depends on (seed, epoch) only, so a run stopped mid-epoch resumes at the very next batch. Test error
is measured at the end of every epoch and reported for the final weights (no selection on the test set).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from shared.config import RunConfig, register, require, require_choice
from shared.data import DATASETS, ImageData, epoch_order, load_dataset
from shared.models import MODELS, build_model
from shared.run import Run
from shared.train.device import select_device
from shared.train.optim import OptimConfig, ScheduleConfig, make_optimizer, make_scheduler


@dataclass
class DataConfig:
    name: Literal["mnist", "digits"] = "mnist"
    root: Optional[str] = None  # folder holding <name>/; default $PIXLAB_DATA, then ~/.cache/pixlab/data
    download: bool = True  # fetch missing files from the dataset's mirrors
    pad: int = 0  # zero pixels added on each side (LeNet-5 reads MNIST padded from 28x28 to 32x32)


@dataclass
class ModelConfig:
    name: str = "lenet5"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    grad_clip: Optional[float] = None  # max global gradient norm
    max_steps: Optional[int] = None  # stop earlier than `epochs` (smoke tests, budgets); the schedule spans it


@dataclass
class ClassifyConfig(RunConfig):
    algo: str = "classify"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.model.name, sorted(MODELS), "model.name")
        require(self.data.name in DATASETS, "data.name", f"must be one of {DATASETS}", self.data.name)
        require(self.data.pad >= 0, "data.pad", "must be >= 0", self.data.pad)
        require(self.train.epochs > 0, "train.epochs", "must be > 0", self.train.epochs)
        require(self.train.batch_size > 0, "train.batch_size", "must be > 0", self.train.batch_size)
        require(self.train.eval_batch_size > 0, "train.eval_batch_size", "must be > 0", self.train.eval_batch_size)
        require((self.train.max_steps or 1) > 0, "train.max_steps", "must be > 0 or null", self.train.max_steps)
        require(self.optim.lr > 0, "optim.lr", "must be > 0", self.optim.lr)


def train(cfg: ClassifyConfig, run: Run) -> None:
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.pad).to(run.device)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.input_shape[0]).to(run.device)
    optimizer = make_optimizer(model, cfg.optim)
    steps_per_epoch = math.ceil(len(data.train) / cfg.train.batch_size)
    total_steps = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf)
    scheduler = make_scheduler(optimizer, cfg.schedule, total_steps)
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler}

    # The running mean of train/loss between two log lines is part of the state, so that a resumed run
    # logs the very numbers an uninterrupted one does.
    state = run.restore(objects) or {"step": 0, "loss_sum": 0.0, "loss_count": 0}
    step = state["step"]
    loss_sum = torch.tensor(state["loss_sum"], device=run.device)
    loss_count = state["loss_count"]

    def save() -> None:
        if loss_count:
            run.check_finite("train/loss", (loss_sum / loss_count).item(), step)
        counters = {"loss_sum": loss_sum.item(), "loss_count": loss_count}
        run.save(step, objects, counters)

    progress = tqdm(total=total_steps, initial=step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True)
    clock, clock_step = time.perf_counter(), step
    while step < total_steps and not run.should_stop:
        epoch, first_batch = divmod(step, steps_per_epoch)
        order = epoch_order(len(data.train), cfg.seed, epoch, run.device)
        model.train()
        for images, labels in data.train.batches(cfg.train.batch_size, order, start=first_batch):
            loss = F.cross_entropy(model(data.prepare(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            progress.update(1)

            if step % cfg.tracking.log_every == 0:
                mean_loss = (loss_sum / loss_count).item()
                run.check_finite("train/loss", mean_loss, step)
                elapsed = time.perf_counter() - clock
                run.log(
                    {
                        "train/loss": mean_loss,
                        "train/lr": optimizer.param_groups[0]["lr"],
                        "train/epoch": step / steps_per_epoch,
                        "train/images_per_s": (step - clock_step) * cfg.train.batch_size / max(elapsed, 1e-9),
                    },
                    step,
                )
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                loss_sum.zero_()
                loss_count = 0
                clock, clock_step = time.perf_counter(), step
            if step % steps_per_epoch == 0:
                metrics = evaluate_split(model, data, cfg.train.eval_batch_size)
                run.log({f"test/{k}": v for k, v in metrics.items()}, step)
                progress.write(f"epoch {step // steps_per_epoch}: test error {metrics['error']:.2%}")
                model.train()
            if step % cfg.checkpoint.every == 0 or step == total_steps or run.should_stop:
                save()
            if run.should_stop or step == total_steps:
                break
    progress.close()
    if run.should_stop:
        return

    final = evaluate_split(model, data, cfg.train.eval_batch_size)
    mistakes = misclassified(model, data, cfg.train.eval_batch_size, limit=64)
    if len(mistakes):
        run.log_images("test/mistakes", mistakes, step)
    run.summary({f"test/{k}": v for k, v in final.items()} | {"train/steps": step})
    print(f"{cfg.name}: test error {final['error']:.2%} ({final['errors']} of {len(data.test)}) after {step} steps")


@torch.no_grad()
def evaluate_split(model: nn.Module, data: ImageData, batch_size: int) -> dict:
    """Mean cross-entropy, error rate and error count of `model` on the test split."""
    model.eval()
    total_loss, errors = 0.0, 0
    for images, labels in data.test.batches(batch_size):
        logits = model(data.prepare(images))
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        errors += (logits.argmax(1) != labels).sum().item()
    n = len(data.test)
    return {"loss": total_loss / n, "error": errors / n, "errors": errors}


@torch.no_grad()
def misclassified(model: nn.Module, data: ImageData, batch_size: int, limit: int) -> torch.Tensor:
    """Up to `limit` test images the model gets wrong, as floats in [0, 1] (N, C, H, W)."""
    model.eval()
    found = []
    for images, labels in data.test.batches(batch_size):
        wrong = model(data.prepare(images)).argmax(1) != labels
        found.append(images[wrong])
        if sum(len(f) for f in found) >= limit:
            break
    return torch.cat(found)[:limit].float().div(255)


def evaluate(cfg: ClassifyConfig, checkpoint: dict) -> dict:
    """Test metrics of the weights in `checkpoint` (what `pixlab eval RUN_DIR` prints)."""
    device = select_device(cfg.device)
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.pad).to(device)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.input_shape[0]).to(device)
    model.load_state_dict(checkpoint["state"]["model"])
    metrics = evaluate_split(model, data, cfg.train.eval_batch_size)
    return {"step": checkpoint["step"]} | {f"test/{k}": v for k, v in metrics.items()}


register("classify", ClassifyConfig, train, evaluate)
