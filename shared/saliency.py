"""What a classifier looks at: gradient saliency, guided backpropagation, class-model visualization, and the
model-randomization sanity check that says whether a map depends on the learned weights at all.

- Saliency (Simonyan, Vedaldi, Zisserman 2014, "Deep inside convolutional networks", Section 3.1): the
  gradient of the unnormalised class score S_c (the logit, not the softmax, which the paper notes can rise
  by lowering the other classes) with respect to the input image; the map is |dS_c/dx| maximised over
  the colour channels.
- Guided backpropagation (Springenberg, Dosovitskiy, Brox, Riedmiller 2015, "Striving for simplicity",
  Figure 1): the same gradient, except that every ReLU passes back only positive gradients, and only where
  its forward input was positive. The ReLUs are swapped for the guided one while the model runs under a
  torch function mode, so it applies the same to `nn.ReLU` modules (VGG, ResNet) and to `F.relu` calls
  (LeNet-5), and the model itself is never changed. A model with another nonlinearity is refused.
- Class-model visualization (Simonyan et al. Section 2): gradient ascent from a zero image on
  S_c(I) - lambda ||I||^2, as in the CS231n 2017 assignment 3 recipe: the image is jittered (rolled by a
  random offset) before each step, the step is the gradient scaled to a fixed norm, and the pixels are
  kept in the data's range. (The assignment also blurs every few steps; not here.)
- Sanity check (Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim 2018, "Sanity checks for saliency maps",
  Section 3): re-initialise the layers from the top down (cascading randomization), one at a time, and
  measure the Spearman rank correlation between the trained model's maps and the randomized model's,
  with and without absolute value. A method whose maps stay correlated after the weights are gone shows
  the input (edges), not what the model learned; a low correlation passes the check. Re-initialising
  every layer is the last stage of the cascade.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Optional

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from shared.errors import PixlabError

# The torch functions that a ReLU module, F.relu, torch.relu and Tensor.relu all end in.
RELU_NAMES = ("relu", "relu_")
# Other nonlinearities for which Springenberg's rule is not defined: guided backprop refuses such models.
OTHER_NONLINEARITIES = (
    "tanh",
    "tanh_",
    "sigmoid",
    "sigmoid_",
    "gelu",
    "silu",
    "elu",
    "elu_",
    "selu",
    "celu",
    "leaky_relu",
    "leaky_relu_",
    "prelu",
    "relu6",
    "hardtanh",
    "hardtanh_",
    "hardswish",
    "mish",
    "softplus",
)


class GuidedBackpropError(PixlabError):
    """Guided backpropagation asked of a model it is not defined for (no ReLU, or another nonlinearity)."""


# --------------------------------------------------------------------- gradients of a class score
def class_scores(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The logits of `classes` (B,) int64 for images x (B, C, H, W): (B,) floats."""
    return model(x).gather(1, classes.view(-1, 1)).squeeze(1)


def input_gradient(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """dS_c/dx for each image and its class: (B, C, H, W), the model's parameters' gradients untouched."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(class_scores(model, x, classes).sum(), x)
    return grad


def saliency_map(gradient: torch.Tensor) -> torch.Tensor:
    """Simonyan's map: |gradient| (B, C, H, W) maximised over channels -> (B, H, W), >= 0."""
    return gradient.abs().amax(1)


def signed_map(gradient: torch.Tensor) -> torch.Tensor:
    """The gradient (B, C, H, W) summed over channels -> (B, H, W), sign kept (the sanity check's signed variant)."""
    return gradient.sum(1)


# --------------------------------------------------------------------- guided backpropagation
class GuidedReLU(torch.autograd.Function):
    """max(x, 0) forward; backward passes a gradient only where it is positive and the input was positive."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0)


class _GuidedReLUs(TorchFunctionMode):
    """Within it, every ReLU the model calls (module or functional; an in-place one returns a new tensor, which
    is what modules and `x = F.relu(x)` use) is a GuidedReLU; another nonlinearity raises."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        self.model_name = model_name
        self.relus = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", None)
        if name in RELU_NAMES:
            self.relus += 1
            return GuidedReLU.apply(args[0])
        if name in OTHER_NONLINEARITIES:
            raise GuidedBackpropError(
                f"guided backpropagation is defined for ReLU networks; {self.model_name} calls {name}"
            )
        return func(*args, **(kwargs or {}))


def guided_backprop(model: nn.Module, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Springenberg et al.'s guided gradient of each image's class score: (B, C, H, W), like `input_gradient`.

    Raises GuidedBackpropError for a model that calls no ReLU or calls another nonlinearity.
    """
    x = x.detach().clone().requires_grad_(True)
    guided = _GuidedReLUs(type(model).__name__)
    with guided:
        scores = class_scores(model, x, classes)
    if guided.relus == 0:
        raise GuidedBackpropError(f"{type(model).__name__} calls no ReLU: guided backpropagation would be the gradient")
    (grad,) = torch.autograd.grad(scores.sum(), x)
    return grad


# --------------------------------------------------------------------- class-model visualization
def class_model(
    model: nn.Module,
    target: int,
    shape: tuple[int, int, int],
    low: torch.Tensor,
    high: torch.Tensor,
    steps: int = 200,
    step_size: float = 0.05,
    l2: float = 1e-3,
    max_jitter: int = 2,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Gradient ascent on S_target(I) - l2 ||I||^2 from I = 0, in the model's input units: (C, H, W).

    shape: (C, H, W) of the input; low, high: (C,) the range of a valid pixel in input units (what 0 and 1
    become after the data's normalisation), where every step clamps the image. Each step rolls the image by
    up to `max_jitter` pixels each way, and moves it by `step_size` per pixel (root mean square): the gradient
    scaled to norm step_size * sqrt(C H W). The CS231n recipe's step of norm 25 on a 3x224x224 image is
    0.064 per pixel, its lambda 1e-3, its jitter 16 of 224 pixels (2 of 28 here).
    """
    device = low.device
    image = torch.zeros(1, *shape, device=device, requires_grad=True)
    low, high = low.view(1, -1, 1, 1), high.view(1, -1, 1, 1)
    norm = step_size * image.numel() ** 0.5
    for _ in range(steps):
        dy, dx = (torch.randint(-max_jitter, max_jitter + 1, (2,), generator=generator)).tolist()
        jittered = torch.roll(image, shifts=(dy, dx), dims=(2, 3))
        objective = model(jittered)[0, target] - l2 * image.pow(2).sum()
        (grad,) = torch.autograd.grad(objective, image)
        with torch.no_grad():
            image += norm * grad / grad.norm().clamp(min=1e-12)
            image.copy_(torch.maximum(torch.minimum(image, high), low))
    return image.detach()[0]


# --------------------------------------------------------------------- the sanity check
def parameter_layers(model: nn.Module) -> list[str]:
    """The names of the modules that hold parameters of their own, input to output (registration order)."""
    return [name for name, module in model.named_modules() if next(module.parameters(recurse=False), None) is not None]


@torch.no_grad()
def cascading_randomization(model: nn.Module, fresh: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Adebayo et al.'s cascade: a copy of `model` whose layers take, from the top layer down, the parameters
    and buffers of `fresh` (the same architecture, newly initialised); yields (layer name, the copy) after each
    layer, the same copy each time. After the last layer every weight is `fresh`'s (full re-initialisation)."""
    randomized = copy.deepcopy(model)
    for name in reversed(parameter_layers(model)):
        target, source = randomized.get_submodule(name), fresh.get_submodule(name)
        for attr, tensor in [*source.named_parameters(recurse=False), *source.named_buffers(recurse=False)]:
            getattr(target, attr).copy_(tensor)
        yield name, randomized


def spearman(a: torch.Tensor, b: torch.Tensor) -> list[Optional[float]]:
    """Spearman's rank correlation of each pair of maps a[i], b[i] (N, ...): N floats in [-1, 1]; None where a
    map is constant (its ranks are all tied, as with a dead network's zero gradient) and the correlation is
    undefined."""
    from scipy.stats import spearmanr

    found: list[Optional[float]] = []
    for x, y in zip(a.flatten(1).cpu().double().numpy(), b.flatten(1).cpu().double().numpy()):
        constant = x.min() == x.max() or y.min() == y.max()
        found.append(None if constant else float(spearmanr(x, y).statistic))
    return found


def mean_defined(values: list[Optional[float]]) -> Optional[float]:
    """The mean of the values that are not None; None when none is."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


METHODS = {"saliency": input_gradient, "guided_backprop": guided_backprop}


def explanation_maps(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, methods: list[str]) -> dict:
    """{"<method>_abs": (B, H, W), "<method>_signed": (B, H, W)} for each method of METHODS."""
    maps = {}
    for method in methods:
        gradient = METHODS[method](model, x, classes)
        maps[f"{method}_abs"] = saliency_map(gradient)
        maps[f"{method}_signed"] = signed_map(gradient)
    return maps


def sanity_check(
    model: nn.Module, fresh: nn.Module, x: torch.Tensor, classes: torch.Tensor, methods: list[str]
) -> tuple[list[dict], dict, list[dict]]:
    """The cascading randomization test on images x (B, C, H, W) with their classes (B,), for `methods`.

    Returns (stages, trained maps, randomized maps per stage): stage i is {"randomized": the layers
    re-initialised so far, top down, "<map>": the mean Spearman correlation over the images (None if undefined
    for all), "<map>_undefined": how many images had a constant map}, for each map of `explanation_maps`.
    """
    trained = explanation_maps(model, x, classes, methods)
    stages, stage_maps, randomized_layers = [], [], []
    for layer, randomized in cascading_randomization(model, fresh):
        randomized_layers.append(layer)
        maps = explanation_maps(randomized, x, classes, methods)
        stage: dict = {"randomized": list(randomized_layers)}
        for key, reference in trained.items():
            correlations = spearman(reference, maps[key])
            stage[key] = mean_defined(correlations)
            stage[f"{key}_undefined"] = sum(c is None for c in correlations)
        stages.append(stage)
        stage_maps.append(maps)
    return stages, trained, stage_maps
