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

from shared.adversarial import AttackConfig, attack, eval_mode, evaluate_attack, pixel_classifier
from shared.config import RunConfig, register, require, require_choice, require_positive
from shared.data import DATASETS, ImageData, Split, class_names, epoch_order, hold_out, load_dataset
from shared.data.augment import AugmentConfig, augment
from shared.distill import DistillConfig, check_teacher, check_values, distillation_loss, load_teacher
from shared.errors import CheckpointError
from shared.figures import as_batch, confusion_counts, confusion_figure, image_grid_figure, mistake_caption, render
from shared.models import MODELS, build_model
from shared.rng import stream
from shared.run import Run, latest_checkpoint, load_checkpoint
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.ema import EMA
from shared.train.loop import EpochClock, RunningMeans
from shared.train.optim import OptimConfig, Schedule, ScheduleConfig, make_optimizer

SIDES = {"mnist": 28, "digits": 8, "cifar10": 32}  # the side of each dataset's images before data.pad


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
class AdversarialTrainingConfig(AttackConfig):
    """Adversarial training: each batch attacked with the current weights, the loss mix * J(x) + (1 - mix) * J(x_adv)
    (Goodfellow et al. 2015, eq. 6, with mix 0.5 and FGSM; Madry et al. 2018 train on PGD examples alone: mix 0)."""

    mix: float = 0.5  # the weight of the clean images' loss


@dataclass
class ClassifyTrainConfig:
    epochs: int = 10
    batch_size: int = 128  # the global batch, split across processes under torchrun
    eval_batch_size: int = 1000
    grad_clip: Optional[float] = None  # max global gradient norm
    max_steps: Optional[int] = None  # stop earlier than `epochs` (smoke tests, budgets); the schedule spans it
    ema_decay: Optional[float] = None  # keep an exponential moving average of the weights and evaluate it
    distill: DistillConfig = field(default_factory=DistillConfig)  # learn a teacher run's soft targets (distill.py)
    adversarial: AdversarialTrainingConfig = field(default_factory=AdversarialTrainingConfig)  # method none: off


@dataclass
class ClassifyConfig(RunConfig):
    algo: str = "classify"
    data: ClassifyDataConfig = field(default_factory=ClassifyDataConfig)
    model: ClassifyModelConfig = field(default_factory=ClassifyModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: ClassifyTrainConfig = field(default_factory=ClassifyTrainConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)  # the attack the final weights are tested against

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.model.name, sorted(MODELS), "model.name")
        require(self.data.name in DATASETS, "data.name", f"must be one of {DATASETS}", self.data.name)
        require(self.data.pad >= 0, "data.pad", "must be >= 0", self.data.pad)
        side = SIDES[self.data.name] + 2 * self.data.pad
        model = getattr(MODELS[self.model.name], "func", MODELS[self.model.name])
        if getattr(model, "fixed_input", False):  # no global pooling: the input size is part of the architecture
            need = model.input_size
            pads = ", ".join(f"{name}: pad {(need - raw) // 2}" for name, raw in SIDES.items() if raw <= need)
            require(
                side == need,
                "data.pad",
                f"gives {side}x{side} images; {self.model.name} reads {need}x{need} ({pads})",
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
        check_values(self.train.distill)
        self.train.adversarial.check("train.adversarial")
        mix = self.train.adversarial.mix
        require(0 <= mix <= 1, "train.adversarial.mix", "must be in [0, 1]", mix)
        require(
            self.train.adversarial.method == "none" or not self.train.distill.teacher,
            "train.adversarial.method",
            "cannot be combined with train.distill (a teacher's soft targets for attacked images are not defined here)",
            self.train.adversarial.method,
        )
        self.attack.check("attack")

    def check(self) -> None:
        if self.train.distill.teacher:
            check_teacher(self.train.distill, self.data.name, self.data.pad, self.data.val_size)


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
    distill = cfg.train.distill
    teacher = load_teacher(distill.teacher, run.device) if distill.teacher else None
    adversarial = cfg.train.adversarial
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
                if adversarial.method == "none":
                    inputs = accel.to_input(data.prepare(images))
                else:
                    start = stream(cfg.seed, "adversarial start", clock.step, run.device)  # PGD's random start
                    inputs = adversarial_inputs(adversarial, model, data, accel, images, labels, start)
                logits = net(inputs).float()
                if teacher is None:
                    loss = adversarial_objective(logits, labels, adversarial)
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(inputs).float()  # the same augmented batch the student sees
                    loss = distillation_loss(
                        logits, teacher_logits, labels, distill.temperature, distill.alpha, reduction="sum"
                    )
                # Summed over the slice and divided by the global batch over the world size: DDP's average
                # of the ranks' gradients is then the gradient of the global batch's mean loss, exactly.
                loss = loss * ddp.world_size / global_batch
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
    summary |= attack_metrics(cfg, scored, data, run.device)
    if ddp.enabled:
        summary |= {"dist/world_size": ddp.world_size, "dist/max_rank_weight_diff": ddp.max_difference(model)}
    if ddp.is_main:
        log_test_figures(cfg, run, scored, data, clock.step)
    run.summary(summary)
    if ddp.is_main:
        print(
            f"{cfg.name}: test error {final['error']:.2%} ({final['errors']} of {len(data.test)}) after {clock.step} steps"
        )
        if "test/attack/error" in summary:
            print(
                f"{cfg.name}: test error {summary['test/attack/error']:.2%} under {cfg.attack.method} "
                f"at epsilon {cfg.attack.epsilon}"
            )


def prepare_data(cfg: ClassifyConfig, device: torch.device) -> ImageData:
    """Load the dataset onto the device; hold out `data.val_size` training images (a fixed split) as `data.val`."""
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.pad)
    if cfg.data.val_size:
        data.train, data.val = hold_out(data.train, cfg.data.val_size, "data.val_size")
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


def adversarial_inputs(
    cfg: AdversarialTrainingConfig,
    model: nn.Module,
    data: ImageData,
    accel: Accelerator,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """The model input of a training batch under adversarial training: the clean images then their attacked
    copies (2B rows), or the attacked copies alone when mix is 0 (B rows). uint8 (B, C, H, W) -> float.

    The attack uses the current weights in eval mode and fp32 (an fp16 gradient can underflow to a zero sign),
    and its examples are constants of the loss, as in Goodfellow et al. sec. 6. One forward pass takes both
    halves, so that DDP sees one forward per backward; batch norm then normalizes them together.
    """
    pixels = images.float().div(255)
    with eval_mode(model), torch.autocast(accel.device.type, enabled=False):
        attacked = attack(cfg, pixel_classifier(model, data, accel.to_input), pixels, labels, generator)
    return accel.to_input(data.prepare_pixels(attacked if cfg.mix == 0 else torch.cat([pixels, attacked])))


def adversarial_objective(logits: torch.Tensor, labels: torch.Tensor, cfg: AdversarialTrainingConfig) -> torch.Tensor:
    """The summed cross-entropy of a batch laid out as `adversarial_inputs` lays it out: mix * J(x) + (1 - mix) *
    J(x_adv) (Goodfellow et al. 2015, eq. 6); the plain summed cross-entropy when adversarial training is off."""
    if cfg.method == "none" or cfg.mix == 0:
        return F.cross_entropy(logits, labels, reduction="sum")
    clean, attacked = logits.chunk(2)
    return cfg.mix * F.cross_entropy(clean, labels, reduction="sum") + (1 - cfg.mix) * F.cross_entropy(
        attacked, labels, reduction="sum"
    )


def attack_metrics(cfg: ClassifyConfig, model: nn.Module, data: ImageData, device: torch.device) -> dict:
    """test/attack/error, /confidence and /wrong_confidence of the `attack:` section ({} when its method is none)."""
    if cfg.attack.method == "none":
        return {}
    start = stream(cfg.seed, "test attack", 0, device)
    metrics = evaluate_attack(cfg.attack, model, data, data.test, cfg.train.eval_batch_size, start)
    return {f"test/attack/{k}": v for k, v in metrics.items()}


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
def predict_test_set(model: nn.Module, data: ImageData, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The class the model gives each test image (N,) int64, and the probability it gives that class (N,) float."""
    model.eval()
    classes, probabilities = [], []
    for images, _ in data.test.batches(batch_size):
        probability, predicted = F.softmax(model(data.prepare(images)).float(), 1).max(1)
        classes.append(predicted)
        probabilities.append(probability)
    return torch.cat(classes), torch.cat(probabilities)


def log_test_figures(
    cfg: ClassifyConfig, run: Run, model: nn.Module, data: ImageData, step: int, limit: int = 64
) -> None:
    """The confusion matrix of the test set (`test/confusion`) and up to `limit` of its misclassified images,
    each captioned with its class, the prediction and the prediction's probability (`test/mistakes`)."""
    predicted, probability = predict_test_set(model, data, cfg.train.eval_batch_size)
    truths = data.test.labels
    names = class_names(cfg.data.name)
    counts = confusion_counts(truths, predicted, data.num_classes)
    figure = confusion_figure(counts, names, f"{cfg.name}, test set, step {step}")
    run.log_images("test/confusion", as_batch(render(figure)), step, nrow=1)
    wrong = (predicted != truths).nonzero()[:, 0]
    if not len(wrong):
        return
    shown = wrong[:limit]
    captions = [
        mistake_caption(t, p, q, names)
        for t, p, q in zip(truths[shown].tolist(), predicted[shown].tolist(), probability[shown].tolist())
    ]
    title = f"{cfg.name}: {len(shown)} of {len(wrong)} misclassified test images, step {step}"
    figure = image_grid_figure(data.test.images[shown].float().div(255), title, captions=captions)
    run.log_images("test/mistakes", as_batch(render(figure)), step, nrow=1)


def evaluate(cfg: ClassifyConfig, checkpoint: dict) -> dict:
    """Test metrics of the weights in `checkpoint` (the EMA weights when the run kept them)."""
    device = select_device(cfg.device)
    data = load_test_data(cfg, device)
    model = scored_model(cfg, checkpoint, data, device)
    metrics = evaluate_split(model, data.test, data, cfg.train.eval_batch_size)
    metrics = {f"test/{k}": v for k, v in metrics.items()} | attack_metrics(cfg, model, data, device)
    return {"step": checkpoint["step"]} | metrics


def load_test_data(cfg: ClassifyConfig, device: torch.device) -> ImageData:
    """The configured dataset with its test split on `device`: evaluation reads nothing else."""
    data = load_dataset(cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.pad)
    data.test = data.test.to(device)
    return data


def scored_model(cfg: ClassifyConfig, checkpoint: dict, data: ImageData, device: torch.device) -> nn.Module:
    """The configured model on `device` with the weights a run reports: the EMA weights when it kept them."""
    model = build_model(cfg.model.name, data.num_classes, in_channels=data.input_shape[0]).to(device)
    state = checkpoint["state"]
    model.load_state_dict(state["ema"]["module"] if "ema" in state else state["model"])
    return model


register(
    ClassifyConfig,
    train,
    evaluate,
    metrics=[
        {"name": "test/error", "goal": "minimize", "unit": "%", "scale": 100},  # logged as a fraction
        {"name": "val/error", "goal": "minimize", "unit": "%", "scale": 100},  # with data.val_size > 0
        {"name": "test/loss", "goal": "minimize", "unit": "nats"},  # cross-entropy
        {"name": "train/loss", "goal": "minimize", "unit": "nats"},
        {"name": "test/errors", "goal": "minimize", "unit": "errors"},  # the count: Hinton et al. 2015's MNIST unit
        # With an `attack:` section: the error on the attacked test set, and the mean probability of the predicted
        # class on it (all images; the misclassified ones alone), the quantities of Goodfellow et al. 2015.
        {"name": "test/attack/error", "goal": "minimize", "unit": "%", "scale": 100, "once": True},
        {"name": "test/attack/confidence", "unit": "%", "scale": 100, "once": True},
        {"name": "test/attack/wrong_confidence", "unit": "%", "scale": 100, "once": True},
        {"name": "train/lr"},
    ],
    media=["test/mistakes", "test/confusion"],
)
