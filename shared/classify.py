"""Supervised image classification: the course's baseline trainer, and later the feature extractor that
scores generative samples.

    pixlab train configs/classify/lenet5_mnist.yaml
    torchrun --standalone --nproc_per_node 2 -m shared.cli train configs/classify/resnet20_cifar10.yaml

The whole dataset sits on the training device as uint8 tensors, and augmentation runs batched on the
device. Each epoch is a permutation that depends on (seed, epoch) only and each step's augmentation on
(seed, step) only, so a run stopped mid-epoch resumes at the very next batch and ends with the weights
an uninterrupted run ends with. Test error is measured at the end of every epoch and reported for the
final weights: nothing is selected or tuned on the test set (the plateau schedule reads a validation
split held out of the training set).

Transfer learning (lecture 7): `model.init_from=runs/<id>` starts from that run's latest weights except
the classifier head, and `model.freeze_backbone=true` trains the new head alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from shared.config import RunConfig, register, require, require_choice, require_positive
from shared.data import DATASETS, ImageData, Split, epoch_order, load_dataset
from shared.data.augment import AugmentConfig, augment
from shared.errors import CheckpointError, ConfigError
from shared.models import MODELS, build_model
from shared.run import Run, latest_checkpoint, load_checkpoint
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.ema import EMA
from shared.train.loop import EpochClock, RunningMeans
from shared.train.optim import OptimConfig, Schedule, ScheduleConfig, make_optimizer


@dataclass
class ClassifyDataConfig:
    name: Literal["mnist", "digits", "cifar10"] = "mnist"
    root: Optional[str] = None  # folder holding <name>/; default $PIXLAB_DATA, then ~/.cache/pixlab/data
    download: bool = True  # fetch missing files from the dataset's mirrors
    pad: int = 0  # zero pixels added on each side (LeNet-5 reads MNIST padded from 28x28 to 32x32)
    val_size: int = 0  # training images held out for validation (a fixed split), needed by schedule=plateau
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ClassifyModelConfig:
    name: str = "lenet5"
    init_from: Optional[str] = (
        None  # a run folder (its latest checkpoint) or a checkpoint file: start from its weights, head excluded
    )
    freeze_backbone: bool = False  # train only the classifier head (with init_from: transfer learning)


@dataclass
class ClassifyTrainConfig:
    epochs: int = 10
    batch_size: int = 128  # the global batch, split across processes under torchrun
    eval_batch_size: int = 1000
    grad_clip: Optional[float] = None  # max global gradient norm
    max_steps: Optional[int] = None  # stop earlier than `epochs` (smoke tests, budgets); the schedule spans it
    ema_decay: Optional[float] = None  # keep an exponential moving average of the weights and evaluate it


@dataclass
class ClassifyConfig(RunConfig):
    algo: str = "classify"
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    model: ClassifyModelConfig = field(default_factory=ClassifyModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: ClassifyTrainConfig = field(default_factory=ClassifyTrainConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.model.name, sorted(MODELS), "model.name")
        require(self.data.name in DATASETS, "data.name", f"must be one of {DATASETS}", self.data.name)
        require(self.data.pad >= 0, "data.pad", "must be >= 0", self.data.pad)
        side = {"mnist": 28, "digits": 8, "cifar10": 32}[self.data.name] + 2 * self.data.pad
        require(
            self.model.name != "lenet5" or side == 32,
            "data.pad",
            f"gives {side}x{side} images; lenet5 reads 32x32 (mnist: pad 2, digits: pad 12, cifar10: pad 0)",
            self.data.pad,
        )
        require(self.data.val_size >= 0, "data.val_size", "must be >= 0", self.data.val_size)
        require(
            self.data.augment.crop_padding >= 0,
            "data.augment.crop_padding",
            "must be >= 0",
            self.data.augment.crop_padding,
        )
        require_positive(
            self, "train.epochs", "train.batch_size", "train.eval_batch_size", optional=("train.max_steps",)
        )
        require(
            self.train.ema_decay is None or 0 < self.train.ema_decay < 1,
            "train.ema_decay",
            "must be in (0, 1)",
            self.train.ema_decay,
        )
        require(self.optim.lr > 0, "optim.lr", "must be > 0", self.optim.lr)
        require(
            self.schedule.name != "plateau" or self.data.val_size > 0,
            "schedule.name",
            "'plateau' needs data.val_size > 0: it reads validation loss, never the test set",
            self.schedule.name,
        )


def train(cfg: ClassifyConfig, run: Run) -> None:
    ddp = run.dist
    data = prepare_data(cfg, run.device)
    accel = Accelerator(cfg.accel, run.device)
    model = build_classifier(cfg, data)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    net = ddp.wrap(accel.prepare(model), run.device)  # what the training step calls
    clock = EpochClock.from_config(cfg, steps_per_epoch=math.ceil(len(data.train) / cfg.train.batch_size))
    schedule = Schedule(optimizer, cfg.schedule, clock.total_steps)
    ema = EMA(model, cfg.train.ema_decay) if cfg.train.ema_decay else None
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule, "accel": accel}
    if ema is not None:
        objects["ema"] = ema
    scored = ema.module if ema is not None else model  # the weights that evaluation reports

    state = run.restore(objects) or {"step": 0}
    clock.start(state["step"])
    running = RunningMeans(["loss"], run.device, state)

    def save() -> None:
        if running.count:
            run.check_finite("train/loss", running.means()["train/loss"], clock.step)
        run.save(clock.step, objects, running.state())

    shard = ddp.shard(cfg.train.batch_size)
    progress = tqdm(
        total=clock.total_steps,
        initial=clock.step,
        desc=cfg.name,
        unit="step",
        disable=None if ddp.is_main else True,
        dynamic_ncols=True,
    )
    while not clock.stop_now:
        order = epoch_order(len(data.train), cfg.seed, clock.epoch, run.device)
        train_mode(model, cfg.model.freeze_backbone)
        for images, labels in data.train.batches(cfg.train.batch_size, order, start=clock.batch):
            global_batch = len(labels)
            images = augment(images, cfg.data.augment, cfg.seed, clock.step)
            images, labels = images[shard], labels[shard]  # this process's slice of the global batch
            with accel.autocast():
                logits = net(accel.to_input(data.prepare(images)))
                # Summed over the slice and divided by the global batch over the world size: DDP's average
                # of the ranks' gradients is then the gradient of the global batch's mean loss, exactly.
                loss = F.cross_entropy(logits.float(), labels, reduction="sum") * ddp.world_size / global_batch
            accel.backward_step(loss, optimizer, model.parameters(), cfg.train.grad_clip)
            schedule.step()
            if ema is not None:
                ema.update(model)
            clock.tick()
            running.add(loss=loss)
            progress.update(1)

            if clock.log_now:
                metrics = running.pop()
                run.check_finite("train/loss", metrics["train/loss"], clock.step)
                run.log(metrics | {"train/lr": schedule.lr} | clock.pace(cfg.train.batch_size), clock.step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            if clock.epoch_ended:
                end_of_epoch(cfg, run, scored, data, schedule, clock.step, progress)
                train_mode(model, cfg.model.freeze_backbone)
            clock.stopped = ddp.any(run.should_stop, run.device)
            if clock.checkpoint_now:
                save()
            if clock.stop_now:
                break
    progress.close()
    if clock.stopped:
        return

    final = evaluate_split(scored, data.test, data, cfg.train.eval_batch_size)
    summary = {f"test/{k}": v for k, v in final.items()} | {"train/steps": clock.step}
    if ddp.enabled:
        summary |= {"dist/world_size": ddp.world_size, "dist/max_rank_weight_diff": ddp.max_difference(model)}
    mistakes = misclassified(scored, data, cfg.train.eval_batch_size, limit=64)
    if len(mistakes):
        run.log_images("test/mistakes", mistakes, clock.step)
    run.summary(summary)
    if ddp.is_main:
        print(
            f"{cfg.name}: test error {final['error']:.2%} ({final['errors']} of {len(data.test)}) after {clock.step} steps"
        )


def prepare_data(cfg: ClassifyConfig, device: torch.device) -> ImageData:
    """Load the dataset onto the device; hold out `data.val_size` training images (a fixed split) as `data.val`."""
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.pad)
    if cfg.data.val_size:
        if cfg.data.val_size >= len(data.train):
            raise ConfigError(
                f"data.val_size={cfg.data.val_size} leaves no training images (the set has {len(data.train)})"
            )
        order = epoch_order(len(data.train), seed=0, epoch=-1, device=torch.device("cpu"))
        held, kept = order[: cfg.data.val_size], order[cfg.data.val_size :]
        data.val = Split(data.train.images[held], data.train.labels[held])
        data.train = Split(data.train.images[kept], data.train.labels[kept])
    return data.to(device)


def build_classifier(cfg: ClassifyConfig, data: ImageData) -> nn.Module:
    """The configured model on the data's device, optionally started from another run's weights (head excluded)."""
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.input_shape[0]).to(data.train.images.device)
    head = type(model).head
    if cfg.model.init_from:
        source = Path(cfg.model.init_from)
        path = latest_checkpoint(source) if source.is_dir() else source
        if path is None:
            raise CheckpointError(f"model.init_from={cfg.model.init_from!r} has no checkpoint")
        weights = load_checkpoint(path, map_location=data.train.images.device)["state"]["model"]
        backbone = {k: v for k, v in weights.items() if not k.startswith(head + ".")}
        missing, unexpected = model.load_state_dict(backbone, strict=False)
        if unexpected or any(not k.startswith(head + ".") for k in missing):
            raise CheckpointError(
                f"{path} does not hold a {cfg.model.name} backbone: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    if cfg.model.freeze_backbone:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith(head + "."))
    return model


def train_mode(model: nn.Module, freeze_backbone: bool) -> None:
    """Training mode, except that a frozen backbone keeps its batch-norm statistics and dropout off."""
    model.train()
    if freeze_backbone:
        model.eval()
        model.get_submodule(type(model).head).train()


def end_of_epoch(cfg, run: Run, scored: nn.Module, data: ImageData, schedule: Schedule, step: int, progress) -> None:
    metrics = {f"test/{k}": v for k, v in evaluate_split(scored, data.test, data, cfg.train.eval_batch_size).items()}
    if data.val is not None:
        val = evaluate_split(scored, data.val, data, cfg.train.eval_batch_size)
        metrics |= {f"val/{k}": v for k, v in val.items()}
        schedule.observe(val["loss"])
    run.log(metrics, step)
    if run.dist.is_main:
        progress.write(
            f"epoch {step // math.ceil(len(data.train) / cfg.train.batch_size)}: test error {metrics['test/error']:.2%}"
        )


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, data: ImageData, batch_size: int) -> dict:
    """Mean cross-entropy, error rate and error count of `model` on one split."""
    model.eval()
    total_loss, errors = 0.0, 0
    for images, labels in split.batches(batch_size):
        logits = model(data.prepare(images)).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        errors += (logits.argmax(1) != labels).sum().item()
    return {"loss": total_loss / len(split), "error": errors / len(split), "errors": errors}


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
    """Test metrics of the weights in `checkpoint` (the EMA weights when the run kept them)."""
    device = select_device(cfg.device)
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.pad)
    data.test = data.test.to(device)
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.input_shape[0]).to(device)
    state = checkpoint["state"]
    model.load_state_dict(state["ema"]["module"] if "ema" in state else state["model"])
    metrics = evaluate_split(model, data.test, data, cfg.train.eval_batch_size)
    return {"step": checkpoint["step"]} | {f"test/{k}": v for k, v in metrics.items()}


register(
    ClassifyConfig,
    train,
    evaluate,
    metrics=[
        {"name": "test/error", "goal": "minimize", "unit": "%", "scale": 100},  # logged as a fraction
        {"name": "val/error", "goal": "minimize", "unit": "%", "scale": 100},  # with data.val_size > 0
        {"name": "test/loss", "goal": "minimize", "unit": "nats"},  # cross-entropy
        {"name": "train/loss", "goal": "minimize", "unit": "nats"},
        {"name": "train/lr"},
    ],
    media=["test/mistakes"],
)
