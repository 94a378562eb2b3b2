"""PixelCNN and Gated PixelCNN: images as products of per-pixel conditionals, trained by maximum likelihood.

    pixlab train configs/pixelcnn/binarized_mnist.yaml
    pixlab train configs/pixelcnn/gated_cifar10.yaml

    p(x) = prod_i p(x_i | x_1 .. x_{i-1}),  pixels in raster order, colour sub-pixels R -> G -> B

Masked convolutions keep every output from seeing its own pixel or any later one, so one forward pass gives
all H*W*C conditionals of a training image at once (van den Oord et al. 2016a, "Pixel Recurrent Neural
Networks", section 3.4). Two networks, chosen by `model.kind`:

- pixelcnn: a 7x7 mask-A convolution, then residual blocks (ReLU, 1x1 2h->h, ReLU, 3x3 mask B, ReLU,
  1x1 h->2h, added to the block's input; PixelRNN paper, Fig. 5), then ReLU + 1x1 mask-B output layers.
  Its receptive field has a blind spot above and to the right of each pixel.
- gated: the Gated PixelCNN (van den Oord et al. 2016b, "Conditional Image Generation with PixelCNN
  Decoders"): a vertical stack that sees the rows above and a horizontal stack that sees the row to the
  left, joined by a vertical-to-horizontal link, so the blind spot is gone; tanh(a) * sigmoid(b) units;
  a residual connection in the horizontal stack; optionally a learned embedding of the class label added
  to every gate (`model.conditional`).

Outputs: one Bernoulli logit per pixel for binarized data; a 256-way softmax per sub-pixel for 8-bit data,
colour sub-pixels ordered R -> G -> B by splitting every layer's channels into three colour groups (channel
c in group c % 3) and masking the centre tap by group: mask A lets group g read input groups < g, mask B
groups <= g (PixelRNN paper, section 3.4, Fig. 4).

Metrics: the test negative log-likelihood in nats per image (`test/nll_nats`, the binarized-MNIST unit) and
in bits per sub-pixel (`test/bits_per_dim` = nats / (C*H*W ln 2), the 8-bit unit), after every epoch and at
the end; with `data.val_size`, that many training images are held out (the same ones for every seed; binarized
once, like the test set) and scored beside it (`val/nll_nats`, `val/bits_per_dim`), so that choices of a
recipe can be made without the test set; `train/loss` is the training NLL in the dataset's headline unit
(nats per image for binarized MNIST, bits/dim otherwise). With each test metric, media/ and W&B get a grid of
samples drawn from the same uniforms every time (`sample.seed`) with the cached sampler of
generative/sampling.py, a row per class when the model is class-conditional (`media/class_samples`,
labelled), and completions of the first test images (`media/completions`): the top half given, the bottom
half sampled `sample.completion_samples` times (the figure of both PixelCNN papers).

Binarized MNIST is binarized afresh at every epoch from (seed, epoch) and scored on the fixed binary test
set (shared/data/binarize.py). Each epoch's order and binarization depend on (seed, epoch) alone, so a run
stopped mid-epoch resumes at the next batch and ends with the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from generative.sampling import Cursor, sample
from shared.config import RunConfig, register, require, require_positive
from shared.data import Split, class_names, epoch_order, load_dataset
from shared.data.binarize import binarize, binarize_test, binarize_validation
from shared.data.tensors import hold_out
from shared.figures import as_batch, completion_figure, image_grid_figure, render
from shared.run import Run
from shared.train.accel import AccelConfig, Accelerator
from shared.train.device import select_device
from shared.train.loop import EpochClock, RunningMeans
from shared.train.optim import OptimConfig, Schedule, ScheduleConfig, make_optimizer

# data.name -> (dataset file set, channels, levels per sub-pixel)
DATA = {
    "binarized_mnist": ("mnist", 1, 2),
    "mnist": ("mnist", 1, 256),
    "cifar10": ("cifar10", 3, 256),
    "digits": ("digits", 1, 256),  # scikit-learn's 8x8 digits (17 grey levels scaled to 0..255): no download
}


# ------------------------------------------------------------------------------------------- layers
def causal_mask(
    kernel_size: tuple[int, int], mask_type: str, in_channels: int, out_channels: int, colours: int = 1
) -> torch.Tensor:
    """The mask (out_channels, in_channels, kh, kw) of a convolution in raster order, 1 where a tap is allowed.

    Rows above the centre: all taps; the centre row: the columns left of the centre; the centre tap: input
    channel i to output channel o when group(i) < group(o) (mask A) or <= (mask B), group(c) = c % colours.
    With one colour, mask A leaves the centre out and mask B keeps it whole.
    """
    kh, kw = kernel_size
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, : kh // 2] = 1
    mask[:, :, kh // 2, : kw // 2] = 1
    group_in = torch.arange(in_channels) % colours
    group_out = torch.arange(out_channels) % colours
    allowed = group_in[None, :] < group_out[:, None] if mask_type == "A" else group_in[None, :] <= group_out[:, None]
    mask[:, :, kh // 2, kw // 2] = allowed.float()
    return mask


def vertical_mask(kernel_size: int, mask_type: str, in_channels: int, out_channels: int) -> torch.Tensor:
    """The Gated PixelCNN's vertical stack, as a k x k mask: the rows above the centre (mask A), or those and
    the centre row (mask B), all k columns. Fed the image through mask A first, the stack's output at row r
    depends on the image's rows < r alone."""
    k = kernel_size
    mask = torch.zeros(out_channels, in_channels, k, k)
    mask[:, :, : k // 2 + (mask_type == "B")] = 1
    return mask


class MaskedConv2d(nn.Conv2d):
    """A k x k (or 1 x k) convolution whose weights are multiplied by a fixed mask, zero-padded to keep H x W.

    The rows below the centre are always masked; storing the kernel without them would save their
    multiply-adds, but on CPU the odd (k//2 + 1) x k shapes ran slower than the full square kernels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: Literal["A", "B"],
        colours: int = 1,
        vertical: bool = False,
    ):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2))
        if vertical:
            mask = vertical_mask(kh, mask_type, in_channels, out_channels)
        else:
            mask = causal_mask((kh, kw), mask_type, in_channels, out_channels, colours)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, cursor: Optional[Cursor] = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W); with a cursor, the output at its position (B, C_out, 1, 1)."""
        weight = self.weight * self.mask
        if cursor is not None:
            return cursor.convolve(self, x, weight)
        return F.conv2d(x, weight, self.bias, padding=self.padding)


def to_input(images: torch.Tensor, levels: int, dtype: torch.dtype) -> torch.Tensor:
    """Pixel levels (B, C, H, W), integers in [0, levels) -> floats in [-1, 1]."""
    return images.to(dtype) * (2 / (levels - 1)) - 1


def outputs_per_subpixel(levels: int) -> int:
    """One Bernoulli logit for binary data, else one logit per level."""
    return 1 if levels == 2 else levels


class OutputHead(nn.Module):
    """ReLU, 1x1 mask B, ReLU, 1x1 mask B (PixelRNN paper, Table 1) -> logits (B, K, C, H, W)."""

    def __init__(self, in_channels: int, hidden: int, channels: int, levels: int):
        super().__init__()
        self.channels, self.k = channels, outputs_per_subpixel(levels)
        self.hidden = MaskedConv2d(in_channels, hidden, 1, "B", channels)
        # Output channel k * C + c is level k of colour c: its group is c, as the masks require.
        self.out = MaskedConv2d(hidden, self.k * channels, 1, "B", channels)

    def forward(self, x: torch.Tensor, cursor: Optional[Cursor] = None) -> torch.Tensor:
        logits = self.out(F.relu(self.hidden(F.relu(x), cursor)), cursor)
        b, _, h, w = logits.shape
        return logits.view(b, self.k, self.channels, h, w)


# ------------------------------------------------------------------------------------------- PixelCNN
class ResidualBlock(nn.Module):
    """PixelRNN paper, Fig. 5: x + 1x1(ReLU(3x3 mask B(ReLU(1x1(ReLU(x)))))), widths 2h -> h -> h -> 2h."""

    def __init__(self, hidden: int, kernel: int, colours: int):
        super().__init__()
        self.reduce = MaskedConv2d(2 * hidden, hidden, 1, "B", colours)
        self.conv = MaskedConv2d(hidden, hidden, kernel, "B", colours)
        self.expand = MaskedConv2d(hidden, 2 * hidden, 1, "B", colours)

    def forward(self, x: torch.Tensor, cursor: Optional[Cursor] = None) -> torch.Tensor:
        y = self.reduce(F.relu(x), cursor)
        y = self.conv(F.relu(y), cursor)
        return x + self.expand(F.relu(y), cursor)


class PixelCNN(nn.Module):
    """The PixelCNN of the PixelRNN paper: 7x7 mask A (C -> 2h), residual blocks, output head."""

    def __init__(
        self,
        channels: int,
        levels: int,
        hidden: int,
        layers: int,
        first_kernel: int = 7,
        kernel: int = 3,
        head_hidden: int = 64,
    ):
        super().__init__()
        self.levels = levels
        self.first = MaskedConv2d(channels, 2 * hidden, first_kernel, "A", channels)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, kernel, channels) for _ in range(layers))
        self.head = OutputHead(2 * hidden, head_hidden, channels, levels)

    def forward(
        self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, cursor: Optional[Cursor] = None
    ) -> torch.Tensor:
        """Pixel levels (B, C, H, W) -> logits (B, K, C, H, W), or (B, K, C, 1, 1) at a cursor. Unconditional: labels unused."""
        x = self.first(to_input(images, self.levels, self.first.weight.dtype), cursor)
        for block in self.blocks:
            x = block(x, cursor)
        return self.head(x, cursor)


# ------------------------------------------------------------------------------------------- Gated PixelCNN
def gate(x: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of the two channel halves (B, 2p, ...) -> (B, p, ...)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks (van den Oord et al. 2016b, Fig. 2), p channels wide.

    vertical:   v_pre = V * v (+ embedding of y),  v' = gate(v_pre)
    horizontal: h' = h + 1x1(gate(H * h + 1x1(v_pre) (+ embedding of y)))   (no residual in the first layer)

    V reads the rows above (`vertical_mask`), H is a 1 x k mask A/B convolution on the row to the left.
    Colour groups run through the horizontal stack (channel c in group c % C, p a multiple of C, so the
    gate's halves pair channels of one group); the vertical stack never sees the current row, so neither
    it nor the link needs them.
    """

    def __init__(
        self, in_channels: int, hidden: int, kernel: int, first: bool, colours: int, num_classes: Optional[int]
    ):
        super().__init__()
        self.first = first
        self.vertical = MaskedConv2d(in_channels, 2 * hidden, kernel, "A" if first else "B", vertical=True)
        self.horizontal = MaskedConv2d(in_channels, 2 * hidden, (1, kernel), "A" if first else "B", colours)
        self.link = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.out = MaskedConv2d(hidden, hidden, 1, "B", colours)
        self.embed_v = nn.Embedding(num_classes, 2 * hidden) if num_classes else None
        self.embed_h = nn.Embedding(num_classes, 2 * hidden) if num_classes else None

    def vertical_step(self, v: torch.Tensor, labels: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> (the next layer's vertical input (B, p, H, W), the link into the horizontal stack (B, 2p, H, W))."""
        pre = self.vertical(v)
        if self.embed_v is not None:
            pre = pre + self.embed_v(labels)[:, :, None, None]
        return gate(pre), self.link(pre)

    def horizontal_step(
        self, h: torch.Tensor, link: torch.Tensor, labels: Optional[torch.Tensor], cursor: Optional[Cursor]
    ) -> torch.Tensor:
        pre = self.horizontal(h, cursor) + link
        if self.embed_h is not None:
            pre = pre + self.embed_h(labels)[:, :, None, None]
        out = self.out(gate(pre), cursor)
        return out if self.first else h + out


class GatedPixelCNN(nn.Module):
    """A first gated layer (k = first_kernel, masks A), `layers` more (k = kernel, masks B), then the output head."""

    def __init__(
        self,
        channels: int,
        levels: int,
        hidden: int,
        layers: int,
        first_kernel: int = 7,
        kernel: int = 3,
        head_hidden: int = 64,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        self.levels = levels
        self.layers = nn.ModuleList(
            GatedLayer(
                channels if i == 0 else hidden,
                hidden,
                first_kernel if i == 0 else kernel,
                i == 0,
                channels,
                num_classes,
            )
            for i in range(layers + 1)
        )
        self.head = OutputHead(hidden, head_hidden, channels, levels)

    def vertical_links(self, x: torch.Tensor, labels: Optional[torch.Tensor]) -> list[torch.Tensor]:
        """The vertical stack's link into each layer's horizontal stack, (B, 2p, H, W) each; row r reads rows < r only."""
        links = []
        for layer in self.layers:
            x, link = layer.vertical_step(x, labels)
            links.append(link)
        return links

    def forward(
        self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, cursor: Optional[Cursor] = None
    ) -> torch.Tensor:
        """Pixel levels (B, C, H, W) and labels (B,) if conditional -> logits (B, K, C, H, W), or (B, K, C, 1, 1) at a cursor."""
        x = to_input(images, self.levels, self.head.out.weight.dtype)
        if cursor is None:
            links = self.vertical_links(x, labels)
        else:
            # The vertical stack at row r reads rows < r, all drawn before the row began: compute it once
            # per row on the canvas, then read each position's link from it.
            rows = cursor.once_per_row(self, lambda: self.vertical_links(x, labels))
            links = [link[:, :, cursor.row : cursor.row + 1, cursor.col : cursor.col + 1] for link in rows]
        h = x
        for layer, link in zip(self.layers, links):
            h = layer.horizontal_step(h, link, labels, cursor)
        return self.head(h, cursor)


# ------------------------------------------------------------------------------------------- likelihood
def nll_nats(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each image in nats: logits (B, K, C, H, W), levels (B, C, H, W) -> (B,).

    K = 1: Bernoulli, sum of binary cross-entropies; K > 1: categorical, sum of cross-entropies.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        per_subpixel = F.binary_cross_entropy_with_logits(logits[:, 0], images.float(), reduction="none")
    else:
        per_subpixel = F.cross_entropy(logits, images.long(), reduction="none")
    return per_subpixel.flatten(1).sum(1)


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    """Nats per image -> bits per sub-pixel: divide by the C*H*W sub-pixels and by ln 2."""
    return nats_per_image / (dims * math.log(2))


# ------------------------------------------------------------------------------------------- config
@dataclass
class PixelCNNDataConfig:
    name: Literal["binarized_mnist", "mnist", "cifar10", "digits"] = "binarized_mnist"
    root: Optional[str] = None  # folder holding <dataset>/; default $PIXLAB_DATA, then ~/.cache/pixlab/data
    download: bool = True  # fetch missing files from the dataset's mirrors
    val_size: int = 0  # training images held out and scored beside the test set (val/nll_nats); 0: none


@dataclass
class PixelCNNModelConfig:
    kind: Literal["pixelcnn", "gated"] = "pixelcnn"
    hidden: int = (
        32  # pixelcnn: h, the residual stream is 2h wide; gated: p, each stack's width. A multiple of 3 for colour
    )
    layers: int = 6  # residual blocks (pixelcnn) or gated layers (gated) after the first layer
    first_kernel: int = 7  # the first layer's k x k (mask A); odd
    kernel: int = 3  # the later layers' k x k (mask B); odd
    head_hidden: int = 64  # width of the first 1x1 output layer
    conditional: bool = False  # gated only: a learned embedding of the class label added to every gate


@dataclass
class PixelCNNTrainConfig:
    epochs: int = 10
    batch_size: int = 64
    eval_batch_size: int = 500
    grad_clip: Optional[float] = None  # max global gradient norm
    max_steps: Optional[int] = None  # stop earlier than `epochs` (budgets, smoke tests); the schedule spans it


@dataclass
class SampleConfig:
    count: int = 64  # images in each logged grid (a conditional model draws count // classes per class)
    seed: int = 0  # the grid's uniforms: the same every time, so successive grids differ by the weights alone
    completions: int = 8  # first test images whose bottom half is sampled given the top half (0: none)
    completion_samples: int = 4  # completions drawn of each


@dataclass
class PixelCNNConfig(RunConfig):
    algo: str = "pixelcnn"
    data: PixelCNNDataConfig = field(default_factory=PixelCNNDataConfig)
    model: PixelCNNModelConfig = field(default_factory=PixelCNNModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: PixelCNNTrainConfig = field(default_factory=PixelCNNTrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.model
        channels = DATA[self.data.name][1]
        require(
            m.hidden > 0 and m.hidden % channels == 0,
            "model.hidden",
            f"must be a positive multiple of {channels} (the colour groups of {self.data.name})",
            m.hidden,
        )
        require(m.layers >= 0, "model.layers", "must be >= 0", m.layers)
        require(
            m.first_kernel >= 3 and m.first_kernel % 2 == 1,
            "model.first_kernel",
            "must be odd and >= 3",
            m.first_kernel,
        )
        require(m.kernel >= 3 and m.kernel % 2 == 1, "model.kernel", "must be odd and >= 3", m.kernel)
        require(
            m.head_hidden > 0 and m.head_hidden % channels == 0,
            "model.head_hidden",
            f"must be a positive multiple of {channels}",
            m.head_hidden,
        )
        require(
            not m.conditional or m.kind == "gated",
            "model.conditional",
            "class conditioning needs model.kind=gated",
            m.conditional,
        )
        require_positive(
            self,
            "train.epochs",
            "train.batch_size",
            "train.eval_batch_size",
            "optim.lr",
            "sample.count",
            "sample.completion_samples",
            optional=("train.max_steps",),
        )
        require(self.sample.completions >= 0, "sample.completions", "must be >= 0", self.sample.completions)
        require(self.data.val_size >= 0, "data.val_size", "must be >= 0", self.data.val_size)
        require(
            self.schedule.name != "plateau",
            "schedule.name",
            "'plateau' is not wired to this trainer's validation loss; use cosine, step or constant",
            self.schedule.name,
        )


def build_model(cfg: PixelCNNModelConfig, channels: int, levels: int, num_classes: int) -> nn.Module:
    sizes = dict(
        hidden=cfg.hidden,
        layers=cfg.layers,
        first_kernel=cfg.first_kernel,
        kernel=cfg.kernel,
        head_hidden=cfg.head_hidden,
    )
    if cfg.kind == "gated":
        return GatedPixelCNN(channels, levels, **sizes, num_classes=num_classes if cfg.conditional else None)
    return PixelCNN(channels, levels, **sizes)


# ------------------------------------------------------------------------------------------- training
@dataclass
class Images:
    """The dataset as the trainer sees it: uint8 pixel levels on the device; the test set (and the validation set
    held out of the training images, if any) already binarized if binary."""

    train: Split
    test: Split
    levels: int
    num_classes: int
    binarized: bool
    val: Optional[Split] = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])

    def train_epoch(self, seed: int, epoch: int) -> Split:
        """The training split of one epoch: binarized afresh from (seed, epoch) for binarized data."""
        if not self.binarized:
            return self.train
        return Split(binarize(self.train.images, seed, epoch), self.train.labels)


def load_images(cfg: PixelCNNConfig, device: torch.device, train: bool = True) -> Images:
    dataset, _, levels = DATA[cfg.data.name]
    data = load_dataset(dataset, cfg.data.root, cfg.data.download)
    test = Split(binarize_test(data.test.images), data.test.labels) if levels == 2 else data.test
    kept, val = data.train, None
    if cfg.data.val_size:
        kept, val = hold_out(data.train, cfg.data.val_size, "data.val_size")
        val = Split(binarize_validation(val.images), val.labels).to(device) if levels == 2 else val.to(device)
    return Images(kept.to(device) if train else kept, test.to(device), levels, data.num_classes, levels == 2, val)


def train(cfg: PixelCNNConfig, run: Run) -> None:
    data = load_images(cfg, run.device)
    channels, height, width = data.shape
    dims = channels * height * width
    accel = Accelerator(cfg.accel, run.device)
    model = build_model(cfg.model, channels, data.levels, data.num_classes).to(run.device)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    net = accel.prepare(model)  # what the training step calls (maybe compiled)
    clock = EpochClock.from_config(cfg, steps_per_epoch=math.ceil(len(data.train) / cfg.train.batch_size))
    schedule = Schedule(optimizer, cfg.schedule, clock.total_steps)
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule, "accel": accel}
    headline = headline_metric(data)
    conditional = cfg.model.conditional

    state = run.restore(objects) or {"step": 0}
    clock.start(state["step"])
    running = RunningMeans(["loss"], run.device, state)  # nats per image

    progress = tqdm(
        total=clock.total_steps, initial=clock.step, desc=cfg.name, unit="step", disable=None, dynamic_ncols=True
    )
    scored: tuple[int, dict] = (-1, {})  # the last step whose test metrics were logged, and those metrics
    while not clock.stop_now:
        order = epoch_order(len(data.train), cfg.seed, clock.epoch, run.device)
        model.train()
        for images, labels in data.train_epoch(cfg.seed, clock.epoch).batches(
            cfg.train.batch_size, order, start=clock.batch
        ):
            with accel.autocast():
                logits = net(accel.to_input(images), labels if conditional else None)
            nats = nll_nats(logits, images).mean()  # per image
            # Minimised per sub-pixel, so that the gradient's scale (and train.grad_clip) does not grow with the image.
            accel.backward_step(nats / dims, optimizer, model.parameters(), cfg.train.grad_clip)
            schedule.step()
            clock.tick()
            running.add(loss=nats)
            progress.update(1)

            if clock.log_now:
                metrics = running.pop()
                run.check_finite("train/loss", metrics["train/loss"], clock.step)
                if headline == "bits_per_dim":
                    metrics["train/loss"] = bits_per_dim(metrics["train/loss"], dims)
                run.log(metrics | {"train/lr": schedule.lr} | clock.pace(cfg.train.batch_size), clock.step)
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
            if clock.epoch_ended:
                scored = (clock.step, score(cfg, run, model, data, clock.step))
                val = f", validation {scored[1][f'val/{headline}']:.4f}" if data.val is not None else ""
                progress.write(
                    f"epoch {clock.step // clock.steps_per_epoch}: test {headline} {scored[1][f'test/{headline}']:.4f}{val}"
                )
                model.train()
            clock.stopped = run.should_stop
            if clock.checkpoint_now:
                run.save(clock.step, objects, running.state())
            if clock.stop_now:
                break
    progress.close()
    if clock.stopped:
        return

    metrics = scored[1] if scored[0] == clock.step else score(cfg, run, model, data, clock.step)
    run.summary(metrics | {"train/steps": clock.step})
    print(f"{cfg.name}: test {headline} {metrics[f'test/{headline}']:.4f} after {clock.step} steps")


def headline_metric(data: Images) -> str:
    """The unit papers report: nats per image for binarized MNIST, bits per sub-pixel for 8-bit images."""
    return "nll_nats" if data.binarized else "bits_per_dim"


def score(cfg: PixelCNNConfig, run: Run, model: nn.Module, data: Images, step: int) -> dict:
    """Log the test (and validation) NLL, a grid of samples and the completions at `step`; return the NLLs."""
    metrics = evaluate_nlls(model, data, cfg.train.eval_batch_size, cfg.model.conditional)
    run.log(metrics, step)
    grid = sample_grid(cfg, model, data)
    if cfg.model.conditional:
        per_class = len(grid) // data.num_classes
        run.log_images("samples", grid, step, nrow=per_class)  # a row per class
        names = class_names(cfg.data.name)
        figure = image_grid_figure(
            grid,
            f"{cfg.name}: samples by class, step {step}",
            columns=per_class,
            row_labels=[f"class {names[c]}" for c in range(data.num_classes)],
            tile_px=max(64, 2 * data.shape[2]),
        )
        run.log_images("media/class_samples", as_batch(render(figure)), step, nrow=1)
    else:
        run.log_images("samples", grid, step)
    if cfg.sample.completions:
        log_completions(cfg, run, model, data, step)
    return metrics


def evaluate_nlls(model: nn.Module, data: Images, batch_size: int, conditional: bool) -> dict:
    """The test NLL and, with a validation set, the validation NLL: {test,val}/{nll_nats,bits_per_dim}."""
    splits = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
    return {
        f"{name}/{unit}": v
        for name, split in splits.items()
        for unit, v in mean_nll(model, split, batch_size, conditional).items()
    }


@torch.no_grad()
def mean_nll(model: nn.Module, split: Split, batch_size: int, conditional: bool) -> dict:
    """Mean NLL of a split's images in nats per image (nll_nats) and in bits per sub-pixel (bits_per_dim)."""
    model.eval()
    total = 0.0
    for images, labels in split.batches(batch_size):
        total += nll_nats(model(images, labels if conditional else None), images).sum().item()
    nats = total / len(split)
    return {"nll_nats": nats, "bits_per_dim": bits_per_dim(nats, math.prod(split.images.shape[1:]))}


def sample_grid(cfg: PixelCNNConfig, model: nn.Module, data: Images) -> torch.Tensor:
    """`sample.count` images drawn with the fixed `sample.seed`, floats in [0, 1] (N, C, H, W).

    A conditional model draws count // classes images of each class, class by class.
    """
    labels = None
    count = cfg.sample.count
    if cfg.model.conditional:
        per_class = max(1, count // data.num_classes)
        labels = torch.arange(data.num_classes, device=data.test.images.device).repeat_interleave(per_class)
        count = len(labels)
    levels = sample(model, count, data.shape, cfg.sample.seed, labels)
    return levels.float() / (data.levels - 1)


def complete(
    model: nn.Module, images: torch.Tensor, samples: int, seed: int, labels: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Pixel levels (N, C, H, W) -> `samples` completions of each, int64 (N, samples, C, H, W): the top H // 2
    rows are the image's, unchanged, and the rest are drawn given them (labels (N,) for a conditional model)."""
    n, channels, height, width = images.shape
    given = images.long().repeat_interleave(samples, 0)
    labels = labels.repeat_interleave(samples) if labels is not None else None
    drawn = sample(model, n * samples, (channels, height, width), seed, labels, given=given, start_row=height // 2)
    return drawn.view(n, samples, channels, height, width)


def log_completions(cfg: PixelCNNConfig, run: Run, model: nn.Module, data: Images, step: int) -> None:
    """The completion figure of the first `sample.completions` test images, drawn from the fixed `sample.seed`."""
    n = min(cfg.sample.completions, len(data.test))
    images, labels = data.test.images[:n], data.test.labels[:n]
    done = complete(
        model, images, cfg.sample.completion_samples, cfg.sample.seed, labels if cfg.model.conditional else None
    )
    height, scale = data.shape[1], data.levels - 1
    names = class_names(cfg.data.name)
    figure = completion_figure(
        images.float() / scale,
        done.float() / scale,
        height // 2,
        f"{cfg.name}: completions at step {step}, top {height // 2} of {height} rows given",
        row_labels=[f"class {names[label]}" for label in labels.tolist()],
    )
    run.log_images("media/completions", as_batch(render(figure)), step, nrow=1)


def evaluate(cfg: PixelCNNConfig, checkpoint: dict) -> dict:
    """Test (and validation) NLL of the weights in `checkpoint`, in nats per image and bits per sub-pixel."""
    device = select_device(cfg.device)
    data = load_images(cfg, device, train=False)
    model = build_model(cfg.model, data.shape[0], data.levels, data.num_classes).to(device)
    model.load_state_dict(checkpoint["state"]["model"])
    return {"step": checkpoint["step"]} | evaluate_nlls(model, data, cfg.train.eval_batch_size, cfg.model.conditional)


register(
    PixelCNNConfig,
    train,
    evaluate,
    metrics=[
        {"name": "test/nll_nats", "goal": "minimize", "unit": "nats/image"},
        {"name": "test/bits_per_dim", "goal": "minimize", "unit": "bits/dim"},
        {"name": "val/nll_nats", "goal": "minimize", "unit": "nats/image"},  # with data.val_size > 0
        {"name": "train/loss", "goal": "minimize", "unit": "nats/image"},
    ],
    media=["samples", "media/completions", "media/class_samples"],
)
