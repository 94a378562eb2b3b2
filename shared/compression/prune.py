"""Magnitude pruning (Han, Pool, Tran, Dally 2015, "Learning both weights and connections for efficient neural
networks"): drop the weights of smallest magnitude, retrain the rest, and repeat.

    layers = prunable_layers(model)                    # {"conv1": Conv2d, ..., "fc2": Linear}
    masks = magnitude_masks(weights(layers), keep)     # {"conv1": bool tensor shaped like its weight, ...}
    apply_masks(layers, masks)                         # pruned weights := 0; again after every optimizer step

The weights of every convolution and linear layer are pruned; biases are not (there are few of them, and the
papers store them dense). Each layer keeps its own fraction of its weights (Han 2015's Tables 1-2 give one per
layer, and keep more of the conv layers than of the fc layers), or one magnitude threshold over all layers
keeps a global fraction. The paper's threshold is a quality parameter times the layer's standard deviation;
ours is the one that keeps the configured fraction, so that a run says how sparse it will end.

The masks are our own boolean tensors, applied to the weights after each optimizer step, rather than
torch.nn.utils.prune's reparametrization: that one renames each pruned `weight` to `weight_orig` plus a
`weight_mask` buffer and a forward hook, so the pruned model's state dict would no longer load into the zoo's
model (`pixlab eval`, the int8 path, any classify tool). Multiplying by the mask after the step keeps a pruned
weight exactly 0.0 whatever the optimizer's momentum or weight decay does to it.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's convolution and linear layers by module name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_kind(layer: nn.Module) -> str:
    """'conv' or 'fc': the two kinds the papers give different sparsities and bit widths."""
    return "conv" if isinstance(layer, nn.Conv2d) else "fc"


def round_keep(final_keep: float, round_index: int, iterations: int) -> float:
    """The fraction kept after round `round_index` (0-based) of `iterations`: final_keep ** ((r + 1) / iterations),
    so that every round removes the same share of the weights that survived the one before."""
    return final_keep ** ((round_index + 1) / iterations)


def magnitude_masks(
    weights: dict[str, torch.Tensor],
    keep: Union[dict[str, float], float],
    previous: Optional[dict[str, torch.Tensor]] = None,
) -> dict[str, torch.Tensor]:
    """Boolean masks (shaped like each weight) keeping the largest magnitudes.

    `keep` a dict: layer name -> fraction of that layer's weights kept, each layer on its own threshold.
    `keep` a float: that fraction of all the weights together, on one global threshold.
    A weight pruned in `previous` stays pruned. Exactly round(fraction * count) weights are kept, at least one
    per layer (ties broken by position).
    """
    previous = previous or {}
    if isinstance(keep, dict):
        return {name: _keep_largest(w, keep[name], previous.get(name)) for name, w in weights.items()}
    names = list(weights)
    flat = torch.cat([weights[n].flatten() for n in names])
    prior = torch.cat([previous[n].flatten() for n in names]) if previous else None
    kept = _keep_largest(flat, keep, prior)
    sizes = [weights[n].numel() for n in names]
    return {n: part.view_as(weights[n]) for n, part in zip(names, kept.split(sizes))}


def _keep_largest(weight: torch.Tensor, fraction: float, previous: Optional[torch.Tensor]) -> torch.Tensor:
    magnitude = weight.detach().abs().flatten()
    if previous is not None:
        magnitude = torch.where(previous.flatten(), magnitude, -1.0)  # below every surviving weight
    count = max(1, round(fraction * magnitude.numel()))  # an empty layer would cut the network
    mask = torch.zeros(magnitude.numel(), dtype=torch.bool, device=weight.device)
    # A stable sort makes the kept set a function of the weights alone: among equal magnitudes the earlier wins.
    mask[torch.sort(magnitude, descending=True, stable=True).indices[:count]] = True
    if previous is not None:
        mask &= previous.flatten()
    return mask.view_as(weight)


@torch.no_grad()
def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Set every pruned weight to exactly 0."""
    for name, mask in masks.items():
        layers[name].weight.mul_(mask)


def count_kept(masks: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(weights kept, weights in the masked layers)."""
    return sum(int(m.sum()) for m in masks.values()), sum(m.numel() for m in masks.values())
