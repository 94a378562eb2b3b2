"""Adversarial examples under an L-infinity budget: FGSM (Goodfellow, Shlens, Szegedy 2015) and PGD (Madry et al.
2018), and the error and confidence of a classifier on the attacked test set.

    attacked = fgsm(classify, pixels, labels, epsilon=0.25)
    attacked = pgd(classify, pixels, labels, epsilon=0.3, steps=40, step_size=0.01, generator=generator)

Both perturb pixels in [0, 1], the image as a file holds it, before the dataset's padding and normalization
(`ImageData.prepare_pixels`), so epsilon is in the papers' units: a fraction of the pixel range (MNIST: 0.25 for
FGSM, 0.3 for PGD). They read the model through `classify`, a function from such pixels to logits, and take the
gradient with respect to the pixels alone: the weights' `.grad` are left as they were. Callers run the model in
eval mode (`eval_mode`), so that an attack moves no batch-norm statistic and draws no dropout mask.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.config import require
from shared.data import ImageData, Split

PixelClassifier = Callable[[torch.Tensor], torch.Tensor]  # (B, C, H, W) pixels in [0, 1] -> (B, K) logits
METHODS = ("none", "fgsm", "pgd")


@dataclass
class AttackConfig:
    """An L-infinity attack; epsilon and step_size in pixel units (the pixel range is [0, 1])."""

    method: Literal["none", "fgsm", "pgd"] = "none"
    epsilon: float = 0.3  # the radius: Goodfellow et al.'s MNIST figures use 0.25, Madry et al.'s 0.3
    steps: int = 40  # PGD: gradient steps (Madry et al., MNIST: 40 in training, 100 to evaluate)
    step_size: float = 0.01  # PGD: the size of each signed step (Madry et al., MNIST: 0.01)
    restarts: int = 1  # PGD: random starts; an image counts as fooled if any start fools the model

    def check(self, prefix: str) -> None:
        """Range checks for a config's `__post_init__`; `prefix` is the section's dotted key, e.g. 'attack'."""
        require(0 <= self.epsilon <= 1, f"{prefix}.epsilon", "must be in [0, 1] (pixel units)", self.epsilon)
        require(self.steps > 0, f"{prefix}.steps", "must be > 0", self.steps)
        require(self.step_size > 0, f"{prefix}.step_size", "must be > 0", self.step_size)
        require(self.restarts > 0, f"{prefix}.restarts", "must be > 0", self.restarts)


def pixel_classifier(model: nn.Module, data: ImageData, to_input: Callable = lambda x: x) -> PixelClassifier:
    """`model` as a function of pixels in [0, 1]: the dataset's padding and normalization, then the model (fp32).
    `to_input` puts a batch in the model's layout (the trainer's `Accelerator.to_input`)."""
    return lambda pixels: model(to_input(data.prepare_pixels(pixels))).float()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode inside the block, then give every submodule back its own mode (a frozen backbone
    stays in eval mode, a head being trained goes back to training mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.train(training)


def input_gradient(classify: PixelClassifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The gradient of the summed cross-entropy with respect to the pixels (B, C, H, W); weights untouched."""
    with torch.enable_grad():
        pixels = pixels.detach().requires_grad_(True)
        loss = F.cross_entropy(classify(pixels), labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, pixels)
    return gradient


def fgsm(classify: PixelClassifier, pixels: torch.Tensor, labels: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015, eq. 3): x + epsilon * sign(grad_x J(x, y)), clipped
    to the pixel range [0, 1]. Pixels (B, C, H, W) in [0, 1] -> attacked pixels, detached."""
    step = epsilon * input_gradient(classify, pixels, labels).sign()
    return (pixels + step).clamp(0, 1).detach()


def pgd(
    classify: PixelClassifier,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Projected gradient descent on the negative loss (Madry et al. 2018, sec. 2.1): a uniform random start in the
    L-infinity ball of radius `epsilon` around the pixels, then `steps` signed steps of `step_size`, each projected
    back onto the ball and clipped to [0, 1]. `generator` (on the pixels' device) draws the start. Pixels
    (B, C, H, W) in [0, 1] -> attacked pixels, detached."""
    low, high = (pixels - epsilon).clamp(min=0), (pixels + epsilon).clamp(max=1)  # the ball within [0, 1]
    noise = torch.rand(pixels.shape, generator=generator, device=pixels.device, dtype=pixels.dtype)
    attacked = torch.minimum(torch.maximum(pixels + epsilon * (2 * noise - 1), low), high)
    for _ in range(steps):
        attacked = attacked + step_size * input_gradient(classify, attacked, labels).sign()
        attacked = torch.minimum(torch.maximum(attacked, low), high)
    return attacked.detach()


def attack(
    cfg: AttackConfig,
    classify: PixelClassifier,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The configured attack on one batch (method 'none': the pixels as they are). PGD with several restarts keeps,
    for each image, the first start that fools the model (the last one when none does)."""
    if cfg.method == "none" or cfg.epsilon == 0:
        return pixels.detach()
    if cfg.method == "fgsm":
        return fgsm(classify, pixels, labels, cfg.epsilon)
    best = None
    for _ in range(cfg.restarts):
        attacked = pgd(classify, pixels, labels, cfg.epsilon, cfg.steps, cfg.step_size, generator)
        if best is None:
            best = attacked
        else:
            with torch.no_grad():
                held = classify(best).argmax(1) != labels  # already fooled by an earlier start: keep it
            best = torch.where(held.view(-1, 1, 1, 1), best, attacked)
    return best


def evaluate_attack(
    cfg: AttackConfig,
    model: nn.Module,
    data: ImageData,
    split: Split,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Error and confidence of `model` (run in eval mode) on the attacked images of `split`.

    error: the fraction misclassified after the attack; confidence: the mean softmax probability of the predicted
    class; wrong_confidence: the same over the misclassified images alone (absent when there are none).
    """
    classify = pixel_classifier(model, data)
    errors, confidence, wrong_confidence = 0, 0.0, 0.0
    with eval_mode(model):
        for images, labels in split.batches(batch_size):
            attacked = attack(cfg, classify, images.float().div(255), labels, generator)
            with torch.no_grad():
                probabilities, predicted = classify(attacked).softmax(1).max(1)
            wrong = predicted != labels
            errors += int(wrong.sum())
            confidence += probabilities.sum().item()
            wrong_confidence += probabilities[wrong].sum().item()
    metrics = {"error": errors / len(split), "confidence": confidence / len(split)}
    return metrics | ({"wrong_confidence": wrong_confidence / errors} if errors else {})
