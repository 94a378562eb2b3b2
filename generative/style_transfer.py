"""Neural style transfer (Gatys, Ecker, Bethge 2016, "Image style transfer using convolutional neural networks").

    pixlab train configs/style/gatys.yaml images.content=me.jpg images.style=starry.jpg model.weights=vgg19.pth

An image x is optimised so that its VGG-19 features match a content image's at one layer and the Gram
matrices of its features match a style image's at several (Section 2). With F^l (N_l, M_l) the responses of
layer l's N_l filters at its M_l positions (after the ReLU), P^l the content image's and A^l the Gram matrix
of the style image's:

    L_content = 1/2 sum_ij (F^l_ij - P^l_ij)^2                                   on conv4_2 (Eq. 1)
    G^l = F^l F^l^T,   E_l = 1 / (4 N_l^2 M_l^2) sum_ij (G^l_ij - A^l_ij)^2      the paper's normalisation (Eq. 4)
    L_style = sum_l w_l E_l,   w_l = 1/5 on conv1_1, conv2_1, conv3_1, conv4_1, conv5_1     (Eq. 5)
    L_total = alpha L_content + beta L_style (+ a total variation term, off by default)     (Eq. 7)

with alpha/beta = 1e-3 (Figure 3's middle columns; the paper uses 1e-3 to 1e-4 and 5e-4 in Figure 2). The
Gram matrix is not divided by the number of positions as in the CS231n assignment: the 1/(4 N^2 M^2) of the
paper does that job inside E_l, so the style image is resized to the content image's size (M_l equal).
The image is optimised with L-BFGS (Section 2.3), one iteration (with a strong-Wolfe line search) per step;
it starts from the content image (the paper starts from white noise:
`optim.init=noise`), which reaches a good image in fewer steps. The pixels are not constrained while L-BFGS
runs (clamping them between iterations would break its curvature estimates); the images shown are clamped to
[0, 1]. Inputs are normalised with ImageNet's
per-channel mean and std, what torchvision's weights expect (the paper's Caffe weights took BGR minus the mean).

The network is pixlab's `vgg19` (shared/models/vgg.py), whose parameter names and shapes are torchvision's:
`model.weights` is a state_dict file of torchvision's ImageNet VGG-19 (vgg19-dcbb9e9d.pth), of which only the
`features.*` tensors are read. Without it the run is refused, since random features give meaningless images;
`model.allow_random_weights=true` runs anyway, for smoke tests. No weights can be downloaded here, so the
losses are tested by hand on a tiny network (tests/test_style.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import torch.nn as nn

from shared.config import RunConfig, register, require, require_positive
from shared.errors import ConfigError
from shared.models.vgg import CONFIGS, POOL, make_features
from shared.run import Run

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics of pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_indices(depth: int = 19) -> dict[str, int]:
    """{"conv1_1": 1, ...}: each convolution's name in the paper's notation (block_position) -> the index in
    `make_features(depth)` of the ReLU after it, whose output is the layer's response."""
    names, block, position, index = {}, 1, 0, 0
    for item in CONFIGS[depth]:
        if item == POOL:
            block, position, index = block + 1, 0, index + 1
            continue
        position += 1
        names[f"conv{block}_{position}"] = index + 1
        index += 2
    return names


LAYERS = layer_indices(19)


@dataclass
class StyleImagesConfig:
    content: str = ""  # an image file PIL reads
    style: str = ""
    size: int = 256  # the content image's longer side, in pixels (the paper: 512); the style image takes its size


@dataclass
class StyleModelConfig:
    weights: Optional[str] = None  # torchvision's VGG-19 ImageNet state_dict (.pth); only features.* is read
    allow_random_weights: bool = False  # run without weights (smoke tests): the result means nothing


@dataclass
class StyleLossConfig:
    content_layer: str = "conv4_2"
    style_layers: list[str] = field(default_factory=lambda: ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"])
    content_weight: float = 1.0  # alpha
    style_weight: float = 1000.0  # beta: alpha / beta = 1e-3
    tv_weight: float = 0.0  # total variation (not in the paper; smooths high-frequency noise)


@dataclass
class StyleOptimConfig:
    name: Literal["lbfgs", "adam"] = "lbfgs"
    steps: int = 300
    lr: float = 1.0  # L-BFGS: its initial step length (1); Adam: try 0.02 (pixels in [0, 1])
    init: Literal["content", "noise"] = "content"  # noise: uniform in [0, 1], as the paper


@dataclass
class StyleMediaConfig:
    every: int = 100  # steps between two snapshots of (content, style, result) in media/ and W&B


@dataclass
class StyleTransferConfig(RunConfig):
    algo: str = "style_transfer"
    images: StyleImagesConfig = field(default_factory=StyleImagesConfig)
    model: StyleModelConfig = field(default_factory=StyleModelConfig)
    loss: StyleLossConfig = field(default_factory=StyleLossConfig)
    optim: StyleOptimConfig = field(default_factory=StyleOptimConfig)
    media: StyleMediaConfig = field(default_factory=StyleMediaConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "images.size", "optim.steps", "optim.lr", "media.every")
        for key in ("content_weight", "style_weight", "tv_weight"):
            require(getattr(self.loss, key) >= 0, f"loss.{key}", "must be >= 0", getattr(self.loss, key))
        for key, layers in (
            ("loss.content_layer", [self.loss.content_layer]),
            ("loss.style_layers", self.loss.style_layers),
        ):
            unknown = [name for name in layers if name not in LAYERS]
            require(not unknown and layers, key, f"names VGG-19 layers, one of {', '.join(LAYERS)}", layers)

    def check(self) -> None:
        for key in ("content", "style"):
            path = getattr(self.images, key)
            require(bool(path) and Path(path).is_file(), f"images.{key}", "must be an image file", path)
        if self.model.weights is None:
            if not self.model.allow_random_weights:
                raise ConfigError(
                    "model.weights is not set: style transfer needs VGG-19's ImageNet weights, a state_dict file of "
                    "torchvision's vgg19 (vgg19-dcbb9e9d.pth); random features give meaningless images. For a "
                    "smoke test only: model.allow_random_weights=true",
                    key="model.weights",
                )
        else:
            require(
                Path(self.model.weights).is_file(), "model.weights", "must be a state_dict file", self.model.weights
            )


# --------------------------------------------------------------------- the losses (Section 2)
def gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T: (B, N, H, W) responses -> (B, N, N), summed over the M = H W positions (not divided by M)."""
    flat = features.flatten(2)  # (B, N, M)
    return flat @ flat.transpose(1, 2)


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: 1/2 sum (F - P)^2 over all responses of one layer (a scalar)."""
    return 0.5 * (features - target).pow(2).sum()


def style_layer_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """Eq. 4: E_l = sum (G - A)^2 / (4 N^2 M^2) for responses (B, N, H, W) and the style's Gram (B, N, N)."""
    n, m = features.shape[1], features.shape[2] * features.shape[3]
    return (gram(features) - target_gram).pow(2).sum() / (4 * n**2 * m**2)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """The sum of squared differences between vertical and horizontal neighbours (B, C, H, W) -> scalar."""
    return (image[..., 1:, :] - image[..., :-1, :]).pow(2).sum() + (image[..., 1:] - image[..., :-1]).pow(2).sum()


class StyleObjective:
    """L_total of an image against fixed content and style targets.

    `extract(x) -> {layer name: (B, N, H, W)}` gives the named responses of input x (B, C, H, W), normalised
    by (x - mean) / std first; the targets are computed once from the content and style images (pixels in
    [0, 1]). Calling it on an image returns (total, {"content": ..., "style": ..., "tv": ...}).
    """

    def __init__(
        self,
        extract: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        content: torch.Tensor,
        style: torch.Tensor,
        cfg: StyleLossConfig,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.extract, self.cfg = extract, cfg
        self.mean = torch.tensor(mean, device=content.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=content.device).view(1, -1, 1, 1)
        with torch.no_grad():
            self.content_target = self.responses(content)[cfg.content_layer]
            style_responses = self.responses(style)
            self.style_targets = {layer: gram(style_responses[layer]) for layer in cfg.style_layers}

    def responses(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.extract((image - self.mean) / self.std)

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        found = self.responses(image)
        parts = {
            "content": content_loss(found[self.cfg.content_layer], self.content_target),
            "style": sum(style_layer_loss(found[layer], a) for layer, a in self.style_targets.items())
            / len(self.style_targets),
            "tv": total_variation(image),
        }
        total = self.cfg.content_weight * parts["content"] + self.cfg.style_weight * parts["style"]
        return total + self.cfg.tv_weight * parts["tv"], parts


# --------------------------------------------------------------------- VGG-19 features
class VGGResponses(nn.Module):
    """VGG-19's convolutional stack, cut after the last layer asked for: (B, 3, H, W) normalised ->
    {layer name: (B, N, H', W')} the ReLU outputs of the named layers."""

    def __init__(self, features: nn.Sequential, layers: list[str]) -> None:
        super().__init__()
        self.wanted = {LAYERS[name]: name for name in layers}
        self.features = features[: max(self.wanted) + 1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        found = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.wanted:
                found[self.wanted[index]] = x
        return found


def load_vgg19_features(path: Optional[str]) -> nn.Sequential:
    """VGG-19's `features` with torchvision's ImageNet weights from the state_dict file at `path` (None: random,
    for smoke tests); a file that is not torchvision's vgg19 is a ConfigError naming what differs."""
    if path is None:
        return make_features(19)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one that holds more than tensors
        raise ConfigError(f"model.weights={path!r}: not a state_dict torch.load can read ({e})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights={path!r}: holds a {type(state).__name__}, not a state_dict")
    given = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    with torch.device("meta"):  # the names and shapes, without the memory or the init time the file replaces
        features = make_features(19)
    expected = features.state_dict()
    missing = [f"features.{k}" for k in expected if k not in given]
    unexpected = [f"features.{k}" for k in given if k not in expected]
    shapes = [
        f"features.{k} {tuple(given[k].shape)} (vgg19: {tuple(v.shape)})"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise ConfigError(
            f"model.weights={path!r} is not torchvision's vgg19 state_dict: {len(missing)} missing {missing[:4]}, "
            f"{len(unexpected)} unexpected {unexpected[:4]}, {len(shapes)} of another shape {shapes[:4]}"
        )
    features.load_state_dict(given, assign=True)
    return features


def load_image(
    path: str, key: str, size: Optional[int] = None, shape: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """An image file as (1, 3, H, W) floats in [0, 1], resized so its longer side is `size`, or to `shape` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise ConfigError(f"{key}={path!r}: not an image PIL can read ({e})", key=key) from None
    if shape is None:
        scale = size / max(image.size)
        shape = (max(1, round(image.size[1] * scale)), max(1, round(image.size[0] * scale)))
    image = image.resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(shape[0], shape[1], 3)
    return pixels.permute(2, 0, 1)[None].float().div(255).contiguous()


class Canvas(nn.Module):
    """The image being optimised, (1, 3, H, W), about [0, 1], as a module so that checkpoints hold it."""

    def __init__(self, start: torch.Tensor) -> None:
        super().__init__()
        self.pixels = nn.Parameter(start.clone())


# --------------------------------------------------------------------- train
def train(cfg: StyleTransferConfig, run: Run) -> None:
    device = run.device
    content = load_image(cfg.images.content, "images.content", size=cfg.images.size).to(device)
    style = load_image(cfg.images.style, "images.style", shape=tuple(content.shape[-2:])).to(device)
    network = VGGResponses(load_vgg19_features(cfg.model.weights), [cfg.loss.content_layer, *cfg.loss.style_layers])
    network = network.to(device).eval().requires_grad_(False)
    objective = StyleObjective(network, content, style, cfg.loss)

    start = content if cfg.optim.init == "content" else torch.rand(content.shape, device=device)
    canvas = Canvas(start)
    if cfg.optim.name == "lbfgs":
        optimizer = torch.optim.LBFGS(canvas.parameters(), lr=cfg.optim.lr, max_iter=1, line_search_fn="strong_wolfe")
    else:
        optimizer = torch.optim.Adam(canvas.parameters(), lr=cfg.optim.lr)
    objects = {"canvas": canvas, "optimizer": optimizer}
    step = (run.restore(objects) or {"step": 0})["step"]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        total, _ = objective(canvas.pixels)
        total.backward()
        return total

    @torch.no_grad()
    def losses() -> dict[str, float]:
        """The losses of the image as it is now (the line search's last trial point may not be it)."""
        total, parts = objective(canvas.pixels)
        return {"train/loss": total.item()} | {f"train/{k}_loss": v.item() for k, v in parts.items()}

    while step < cfg.optim.steps:
        optimizer.step(closure)  # L-BFGS: one iteration, evaluating the loss as often as its line search needs
        step += 1
        if step % cfg.tracking.log_every == 0 or step == cfg.optim.steps:
            run.log(losses(), step)
        if step % cfg.media.every == 0 or step == cfg.optim.steps:
            result = canvas.pixels.detach().clamp(0, 1)
            run.log_images("samples", torch.cat([content, style, result]), step, nrow=3)
        if run.should_stop or step % cfg.checkpoint.every == 0 or step == cfg.optim.steps:
            run.save(step, objects)
        if run.should_stop:
            return
    run.summary(losses())


register(
    StyleTransferConfig,
    train,
    metrics=[
        {"name": "train/loss", "goal": "minimize"},  # alpha L_content + beta L_style (+ TV)
        {"name": "train/content_loss", "goal": "minimize"},
        {"name": "train/style_loss", "goal": "minimize"},
        {"name": "train/tv_loss"},
    ],
    media=["samples"],
)
