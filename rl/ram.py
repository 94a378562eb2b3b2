"""The Recurrent Attention Model for digit classification (Mnih, Heess, Graves, Kavukcuoglu 2014, "Recurrent
models of visual attention"): REINFORCE applied to vision.

    pixlab train configs/ram/mnist.yaml          28x28 MNIST, 6 glimpses of 8x8
    pixlab train configs/ram/translated60.yaml   60x60 translated MNIST, 6 glimpses of 12x12 at 3 scales

The model never sees the whole image. From a random first location it takes `glimpses` glimpses: each
time the glimpse network reads a retina around the current location, the core RNN updates its state, and
the location policy (a Gaussian with fixed std) chooses where to look next. After the last glimpse a
linear classifier reads the state. The hybrid loss of section 4:

    loss = NLL(classifier)                                          backprop, trains sensor path and core
         + mean over images of sum_t -(R - b_t) log pi(l_t | h_t)     REINFORCE, R = 1 if the class is right
         + mean over images of sum_t (b_t - R)^2                      the baseline b_t, a linear map of h_t

Evaluation combines the class distributions of `eval_samples` sampled glimpse paths per image (a fixed
seed, so the figure is repeatable): `eval_average: prob` takes their mean, the Monte Carlo estimate of the
marginal; `log_prob` the mean of their log-probabilities, renormalized (a geometric mean, kevinzakka's
choice), under which any path that rules a class out vetoes it. `val_samples` can score the validation
set, every epoch, with fewer paths than the test.

With `task.val_size`, that many training images are held out (the same ones for every seed): each epoch
is scored on them, the plateau schedule reads their error (as kevinzakka's port does), and
`train.select: best` reports the test error of the weights with the lowest validation error (stopping after
`train.patience` epochs without a new best); the test set is never used to choose anything. Each epoch's
training images are drawn afresh for the translated and cluttered tasks; the location noise of step s comes
from a generator seeded by (seed, s): a run stopped mid-epoch resumes exactly. Training runs through the
shared Accelerator (`accel:`); the loss, and the location policy (shared/models/glimpse.py says why), are
computed in fp32 under any precision, and so is evaluation, whose test error is the figure compared with the
paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from shared.config import RunConfig, register, require, require_positive
from shared.data import Split, epoch_order, hold_out, load_dataset
from shared.data.translated import TEST_SEED, place
from shared.figures import as_batch, glimpse_figure, glimpse_frames, render
from shared.media import write_video
from shared.models.glimpse import Core, GlimpseConfig, GlimpseNetwork, LocationPolicy, location_to_pixel
from shared.rng import stream
from shared.run import Run
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.loop import EpochClock, RunningMeans
from shared.train.optim import OptimConfig, Schedule, ScheduleConfig, make_optimizer
from shared.train.select import BestWeights

GLIMPSES_PER_SECOND = 1.5  # the pace of the glimpse animations: time to find each new glimpse on the digit


@dataclass
class TaskConfig:
    root: Optional[str] = None  # folder holding mnist/; default $PIXLAB_DATA, then ~/.cache/pixlab/data
    download: bool = True
    canvas: int = 28  # 28: MNIST as it is; 60 or 100: digits translated on a blank canvas of that side
    clutter: int = 0  # fragments of other digits pasted on the canvas (paper: 4 on 60x60, 8 on 100x100)
    fragment: int = 8  # side of a clutter fragment
    test_limit: Optional[int] = None  # score only the first N test images (smoke runs; not comparable to papers)
    val_size: int = 0  # training images held out for validation (a fixed split): plateau, select=best, patience
    train_limit: Optional[int] = None  # train on the first N images left after val_size (smoke runs, tests)


@dataclass
class RAMTrainConfig:
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 1000
    eval_samples: int = 10  # glimpse paths per evaluated image whose class distributions are combined
    val_samples: Optional[int] = None  # paths per validation image, scored every epoch (None: eval_samples)
    eval_average: Literal["prob", "log_prob"] = "prob"  # combine them by their mean, or their log's mean (docstring)
    max_steps: Optional[int] = None  # stop earlier than `epochs` (smoke tests, budgets)
    grad_clip: Optional[float] = None
    paths_to_plot: int = 8  # test images whose glimpse paths are drawn to media/ each epoch, and animated at the end
    select: Literal["last", "best"] = "last"  # the weights the final test scores: the last, or the best on val
    patience: Optional[int] = None  # select=best: stop after this many epochs without a new best val error
    test_every: int = 1  # epochs between two test evaluations (the curve); the last step is always tested


@dataclass
class RAMConfig(RunConfig):
    algo: str = "ram"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: GlimpseConfig = field(default_factory=GlimpseConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=1e-3))
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: RAMTrainConfig = field(default_factory=RAMTrainConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        t, m = self.task, self.model
        require(t.canvas >= 28, "task.canvas", "must be >= 28 (the MNIST digits are 28x28)", t.canvas)
        require(t.clutter >= 0, "task.clutter", "must be >= 0", t.clutter)
        require(
            t.clutter == 0 or t.canvas > 28,
            "task.clutter",
            "needs task.canvas > 28 (clutter goes on a larger canvas)",
            t.clutter,
        )
        require(0 < t.fragment <= 28, "task.fragment", "must be in 1..28", t.fragment)
        require((t.test_limit or 1) > 0, "task.test_limit", "must be > 0 or null", t.test_limit)
        require((t.train_limit or 1) > 0, "task.train_limit", "must be > 0 or null", t.train_limit)
        require(m.glimpses >= 1, "model.glimpses", "must be >= 1", m.glimpses)
        require(m.patch >= 1, "model.patch", "must be >= 1", m.patch)
        require(m.scales >= 1, "model.scales", "must be >= 1", m.scales)
        require(m.location_std > 0, "model.location_std", "must be > 0", m.location_std)
        require_positive(self, "train.epochs", "train.batch_size")
        require(self.train.eval_samples >= 1, "train.eval_samples", "must be >= 1", self.train.eval_samples)
        require((self.train.val_samples or 1) >= 1, "train.val_samples", "must be >= 1 or null", self.train.val_samples)
        require((self.train.max_steps or 1) > 0, "train.max_steps", "must be > 0 or null", self.train.max_steps)
        require(self.train.test_every >= 1, "train.test_every", "must be >= 1", self.train.test_every)
        require(t.val_size >= 0, "task.val_size", "must be >= 0", t.val_size)
        require(
            self.schedule.name != "plateau" or t.val_size > 0,
            "schedule.name",
            "'plateau' needs task.val_size > 0: it reads validation error, never the test set",
            self.schedule.name,
        )
        require(
            self.train.select == "last" or t.val_size > 0,
            "train.select",
            "'best' needs task.val_size > 0: it selects on validation error, never on the test set",
            self.train.select,
        )
        require(
            self.train.patience is None or (self.train.patience >= 1 and self.train.select == "best"),
            "train.patience",
            "must be >= 1 and needs train.select=best (early stopping keeps the best weights)",
            self.train.patience,
        )


class Glimpses(NamedTuple):
    logits: torch.Tensor  # (B, classes), after the last glimpse
    log_probs: torch.Tensor  # (B, glimpses - 1): log pi of each chosen next location
    baselines: torch.Tensor  # (B, glimpses - 1): b_t, the expected reward before each choice
    locations: torch.Tensor  # (B, glimpses, 2): where each glimpse looked, in [-1, 1] (unclamped samples)


class RecurrentAttention(nn.Module):
    """x (B, C, H, W) float in [0, 1] -> Glimpses, the glimpse path sampled with `generator`."""

    def __init__(self, channels: int, classes: int, cfg: GlimpseConfig) -> None:
        super().__init__()
        self.glimpses = cfg.glimpses
        self.glimpse = GlimpseNetwork(
            channels, cfg.patch, cfg.scales, cfg.what, cfg.where, cfg.glimpse_features, cfg.pool
        )
        self.core = Core(cfg.glimpse_features, cfg.hidden, cfg.core)
        self.locate = LocationPolicy(cfg.hidden, cfg.location_std)
        self.classifier = nn.Linear(cfg.hidden, classes)
        self.baseline = nn.Linear(cfg.hidden, 1)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> Glimpses:
        b = x.shape[0]
        state = self.core.initial_state(b, x.device)
        location = torch.rand(b, 2, generator=generator, device=x.device) * 2 - 1  # the first look: anywhere
        locations, log_probs, baselines = [location], [], []
        for t in range(self.glimpses):
            h, state = self.core(self.glimpse(x, location), state)
            if t == self.glimpses - 1:
                break
            mean = self.locate(h)
            location = self.locate.sample(mean, generator)
            log_probs.append(self.locate.log_prob(mean, location))
            baselines.append(self.baseline(h.detach()).squeeze(1))
            locations.append(location)
        empty = x.new_zeros(b, 0)
        return Glimpses(
            self.classifier(h),
            torch.stack(log_probs, 1) if log_probs else empty,
            torch.stack(baselines, 1) if baselines else empty,
            torch.stack(locations, 1),
        )


def hybrid_loss(out: Glimpses, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The paper's hybrid loss (module docstring) and its parts, for one batch, in fp32 under autocast too."""
    logits, baselines = out.logits.float(), out.baselines.float()
    nll = F.cross_entropy(logits, labels)
    reward = (logits.argmax(1) == labels).float()  # (B,)
    advantage = (reward[:, None] - baselines).detach()
    reinforce = -(advantage * out.log_probs).sum(1).mean()
    baseline_mse = (baselines - reward[:, None]).pow(2).sum(1).mean()
    parts = {
        "nll": nll.detach(),
        "reinforce": reinforce.detach(),
        "baseline_mse": baseline_mse.detach(),
        "reward": reward.mean(),
    }
    return nll + reinforce + baseline_mse, parts


def task_split(cfg: RAMConfig, split: Split, seed: int, epoch: int) -> Split:
    """The task's version of an MNIST split: as it is, or translated (and cluttered) on a larger canvas."""
    if cfg.task.canvas == 28:
        return split
    return place(split, cfg.task.canvas, cfg.task.clutter, cfg.task.fragment, seed, epoch)


def fixed_test_split(cfg: RAMConfig, mnist_test: Split) -> Split:
    """The fixed test set of the task (its first `task.test_limit` images if set)."""
    return task_split(cfg, mnist_test, TEST_SEED, -1).head(cfg.task.test_limit)


def train_val_splits(cfg: RAMConfig, mnist_train: Split) -> tuple[Split, Optional[Split]]:
    """The MNIST training images left to train on (the first `task.train_limit` if set), and the task's fixed
    validation set (None without `task.val_size`), placed once on the canvas like the test set but apart
    from it."""
    kept, val = mnist_train, None
    if cfg.task.val_size:
        kept, held = hold_out(mnist_train, cfg.task.val_size, "task.val_size")
        val = task_split(cfg, held, TEST_SEED, -2)
    return kept.head(cfg.task.train_limit), val


def train(cfg: RAMConfig, run: Run) -> None:
    device = run.device
    mnist = load_dataset("mnist", cfg.task.root, cfg.task.download).to(device)
    test = fixed_test_split(cfg, mnist.test)
    mnist_train, val = train_val_splits(cfg, mnist.train)
    accel = Accelerator(cfg.accel, device)
    model = RecurrentAttention(1, mnist.num_classes, cfg.model).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    net = accel.prepare(model)  # what the training step calls (maybe compiled)
    clock = EpochClock.from_config(cfg, steps_per_epoch=math.ceil(len(mnist_train) / cfg.train.batch_size))
    schedule = Schedule(optimizer, cfg.schedule, clock.total_steps)
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule}
    best = BestWeights(model, cfg.train.patience) if cfg.train.select == "best" else None
    if best is not None:
        objects["best"] = best
    state = run.restore(objects) or {"step": 0}
    clock.start(state["step"])
    if best is not None and best.exhausted:  # stopped early before this resume
        clock.finish()
    running = RunningMeans(["nll", "reinforce", "baseline_mse", "reward", "loss"], device, state)
    # The Accelerator's state (the fp16 loss scale) rides in the counters: checkpoints from before RAM had an
    # Accelerator hold none, and must still resume.
    accel.load_state_dict(state.get("accel"))

    progress = tqdm(
        total=clock.total_steps, initial=clock.step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True
    )
    scored: dict = {}  # the newest end-of-epoch metrics
    while not clock.stop_now:
        train_split = task_split(cfg, mnist_train, cfg.seed, clock.epoch)
        order = epoch_order(len(train_split), cfg.seed, clock.epoch, device)
        model.train()
        for images, labels in train_split.batches(cfg.train.batch_size, order, start=clock.batch):
            with accel.autocast():
                out = net(
                    accel.to_input(images.float().div_(255)), stream(cfg.seed, "glimpse locations", clock.step, device)
                )
            loss, parts = hybrid_loss(out, labels)
            accel.backward_step(loss, optimizer, model.parameters(), cfg.train.grad_clip)
            schedule.step()
            clock.tick()
            running.add(loss=loss, **parts)
            progress.update(1)
            if clock.log_now:
                metrics = running.pop()
                run.check_finite("train/loss", metrics["train/loss"], clock.step)
                run.log(metrics | {"train/lr": schedule.lr} | clock.pace(cfg.train.batch_size), clock.step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", reward=f"{metrics['train/reward']:.3f}")
            if clock.epoch_ended or clock.finished:
                scored = end_of_epoch(model, val, test, cfg, run, clock, schedule, best)
                plot_glimpses(model, test, cfg, run, clock.step, animate=clock.finished)
                progress.write(
                    f"epoch {clock.step / clock.steps_per_epoch:.2f}: "
                    + ", ".join(f"{k} {v:.2%}" for k, v in scored.items() if k.endswith("/error"))
                )
                model.train()
            clock.stopped = run.should_stop
            if clock.checkpoint_now:
                run.save(clock.step, objects, running.state() | {"accel": accel.state_dict()})
            if clock.stop_now:
                break
    progress.close()
    if clock.stopped:
        return
    summary = {"train/steps": clock.step}
    if best is not None:
        best.restore(model)
        summary |= {"val/best_error": best.metric, "train/best_step": best.step}
        final = evaluate_split(model, test, cfg)
    else:  # the last step's test, unless a run resumed at its last step has not tested yet
        final = {k.removeprefix("test/"): v for k, v in scored.items() if k.startswith("test/")}
        final = final or evaluate_split(model, test, cfg)
    run.summary({f"test/{k}": v for k, v in final.items()} | summary)
    chosen = f"the best validation step, {best.step}, of {clock.step}" if best is not None else f"{clock.step} steps"
    print(
        f"{cfg.name}: test error {final['error']:.2%} ({final['errors']} of {len(test)}) after {chosen}, {cfg.model.glimpses} glimpses"
    )


def end_of_epoch(
    model: RecurrentAttention,
    val: Optional[Split],
    test: Split,
    cfg: RAMConfig,
    run: Run,
    clock: EpochClock,
    schedule: Schedule,
    best: Optional[BestWeights],
) -> dict:
    """Score the validation set (feeding the plateau schedule, the selection and early stopping) and, when due,
    the test set; log and return the metrics."""
    metrics = {}
    if val is not None:
        validated = evaluate_split(model, val, cfg, cfg.train.val_samples)
        metrics |= {f"val/{k}": v for k, v in validated.items()}
        schedule.observe(validated["error"])
        if best is not None:
            best.observe(validated["error"], clock.step, model)
            if best.exhausted:
                clock.finish()
    if clock.finished or (clock.step // clock.steps_per_epoch) % cfg.train.test_every == 0:
        metrics |= {f"test/{k}": v for k, v in evaluate_split(model, test, cfg).items()}
    run.log(metrics, clock.step)
    return metrics


def combine_paths(log_p: torch.Tensor, average: str) -> torch.Tensor:
    """log_p (paths, B, classes), each path's log-probabilities -> (B, classes) log-probabilities of their
    combination: log of the mean probability ("prob"), or the log-softmax of the mean log-probability ("log_prob")."""
    if average == "prob":
        return torch.logsumexp(log_p, 0) - math.log(log_p.shape[0])
    return F.log_softmax(log_p.mean(0), 1)


@torch.no_grad()
def evaluate_split(model: RecurrentAttention, split: Split, cfg: RAMConfig, samples: Optional[int] = None) -> dict:
    """Error and NLL of the class distribution combined from `samples` (default `eval_samples`) glimpse paths
    per image."""
    model.eval()
    m = samples or cfg.train.eval_samples
    generator = stream(cfg.seed, "glimpse locations", -1, split.images.device)  # the same paths at every evaluation
    errors, nll = 0, 0.0
    for images, labels in split.batches(max(1, cfg.train.eval_batch_size // m)):
        x = images.float().div_(255).repeat(m, 1, 1, 1)  # (m * B, C, H, W), path j of image i at j * B + i
        log_p = F.log_softmax(model(x, generator).logits, 1).view(m, len(labels), -1)
        combined = combine_paths(log_p, cfg.train.eval_average)
        errors += (combined.argmax(1) != labels).sum().item()
        nll += F.nll_loss(combined, labels, reduction="sum").item()
    return {"error": errors / len(split), "errors": errors, "nll": nll / len(split)}


@torch.no_grad()
def plot_glimpses(model: RecurrentAttention, split: Split, cfg: RAMConfig, run: Run, step: int, animate: bool) -> None:
    """The first `paths_to_plot` test digits at 4x or more with their numbered glimpses, the retina's scales,
    the truth and the prediction (`test/glimpse_paths`); with `animate`, also an animation per digit that draws
    its glimpses one after the other (`test/glimpse_video/<i>`, MP4 or GIF in media/). Each digit's path is
    sampled from a fixed generator, so successive figures differ by the weights alone."""
    count = min(cfg.train.paths_to_plot, len(split))
    if not count:
        return
    model.eval()
    images, truths = split.images[:count].float().div(255), split.labels[:count].tolist()
    out = model(images, stream(cfg.seed, "glimpse locations", -2, images.device))
    h, w = images.shape[-2:]
    centres = torch.stack(
        [location_to_pixel(out.locations[..., 0], h), location_to_pixel(out.locations[..., 1], w)], -1
    )
    predictions = out.logits.argmax(1).tolist()  # the answer after this one path, not the evaluation's average
    sides = model.glimpse.sensor.sides
    title = f"{cfg.name}: {cfg.model.glimpses} glimpses per test digit, step {step}"
    figure = glimpse_figure(images, centres, sides, truths, predictions, title)
    run.log_images("test/glimpse_paths", as_batch(render(figure)), step, nrow=1)
    if not animate:
        return
    for i in range(count):
        frames = glimpse_frames(images[i], centres[i], sides, truths[i], predictions[i], f"test digit {i}")
        path = write_video(frames, run.dir / "media" / f"test_glimpse_video_{i}-{step:09d}", GLIMPSES_PER_SECOND)
        run.log_video(f"test/glimpse_video/{i}", path, step)


def evaluate(cfg: RAMConfig, checkpoint: dict) -> dict:
    """`pixlab eval RUN_DIR`: the test error of the checkpoint's model on the task's fixed test set."""
    device = select_device(cfg.device)
    mnist = load_dataset("mnist", cfg.task.root, cfg.task.download)
    test = fixed_test_split(cfg, mnist.test.to(device))
    model = RecurrentAttention(1, mnist.num_classes, cfg.model).to(device)
    state = checkpoint["state"]
    model.load_state_dict(state["best"]["weights"] if cfg.train.select == "best" else state["model"])  # as scored
    return {"step": checkpoint["step"]} | {f"test/{k}": v for k, v in evaluate_split(model, test, cfg).items()}


register(
    RAMConfig,
    train,
    evaluate,
    metrics=[
        {"name": "test/error", "goal": "minimize", "unit": "%", "scale": 100},  # logged as a fraction
        {"name": "val/error", "goal": "minimize", "unit": "%", "scale": 100},  # with task.val_size > 0
        {"name": "train/loss", "goal": "minimize"},  # the hybrid loss: NLL + REINFORCE + baseline MSE
        {"name": "train/reward", "goal": "maximize"},  # the fraction of right answers
    ],
    # One animation per plotted digit, the default `train.paths_to_plot` of them.
    media=["test/glimpse_paths", *(f"test/glimpse_video/{i}" for i in range(RAMTrainConfig.paths_to_plot))],
)
