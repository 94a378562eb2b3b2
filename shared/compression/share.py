"""Weight sharing by k-means, with fine-tuned centroids (Han, Mao, Dally 2016, "Deep Compression", Section 3).

Each layer's surviving weights are clustered into 2**bits values: the layer then stores one `bits`-wide code
per weight and a codebook of 2**bits fp32 centroids. The paper's choices, kept here:
- k-means per layer, no sharing across layers;
- linear initialization, centroids spaced evenly over [min, max] of the weights: the paper found it beats
  random and density-based initialization because it keeps a few centroids out among the large weights,
  which are few and matter most;
- fine-tuning: the network runs with the shared weights, and the gradient of a centroid is the sum of the
  gradients of the weights that share it (the paper's Figure 3), so the codes stay fixed and only the
  codebook (and the biases, stored fp32) learn.
Pruned weights take no code and stay exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Lloyd's iterations before giving up on convergence: 1-D k-means with at most 256 clusters settles in a few
# dozen on every LeNet layer we tried.
KMEANS_ITERATIONS = 300


def nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(N,) values, (K,) centroids in ascending order -> (N,) int64 index of the nearest centroid (the lower
    one on a tie). In one dimension the nearest centroid is found by the midpoints, in O(N log K) memory-light."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = KMEANS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of (N,) values into k clusters from a linear initialization over [min, max].

    Returns (centroids (k,) ascending, assignments (N,) int64). An empty cluster keeps its centroid. In one
    dimension each cluster is an interval, so its mean stays between its neighbours' and the order holds.
    """
    values = values.detach().flatten()
    centroids = torch.linspace(float(values.min()), float(values.max()), k, dtype=values.dtype, device=values.device)
    for _ in range(iterations):
        assignment = nearest(values, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assignment, values)
        counts = torch.bincount(assignment, minlength=k)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids, nearest(values, centroids)


class SharedLayer:
    """One layer's weights as codes into a codebook: weight = centroids[codes] where the mask is set, else 0.

    centroids: (K,) float Parameter, K = 2**bits; codes: (kept,) int64, in the order of `mask`'s set positions.
    """

    def __init__(self, centroids: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor, bits: int) -> None:
        self.centroids = nn.Parameter(centroids)
        self.codes = codes
        self.mask = mask
        self.bits = bits

    @classmethod
    def cluster(cls, weight: torch.Tensor, mask: torch.Tensor, bits: int) -> "SharedLayer":
        """k-means (2**bits clusters) of the weights the mask keeps."""
        centroids, codes = kmeans_1d(weight.detach()[mask], 2**bits)
        return cls(centroids, codes, mask, bits)

    def weight(self) -> torch.Tensor:
        """The shared weights, shaped like the mask: centroids[codes] at kept positions, 0 elsewhere."""
        dense = torch.zeros(self.mask.shape, dtype=self.centroids.dtype, device=self.centroids.device)
        dense[self.mask] = self.centroids.detach()[self.codes]
        return dense

    def gradient(self, weight_grad: torch.Tensor) -> torch.Tensor:
        """(K,) gradient of the centroids: for each centroid, the sum of the gradients of its weights."""
        return torch.zeros_like(self.centroids).index_add_(0, self.codes, weight_grad[self.mask])

    def state(self) -> dict:
        """Tensors and ints only, for a checkpoint."""
        return {"centroids": self.centroids.detach().clone(), "codes": self.codes, "mask": self.mask, "bits": self.bits}

    @classmethod
    def from_state(cls, state: dict) -> "SharedLayer":
        return cls(state["centroids"], state["codes"], state["mask"], int(state["bits"]))


@torch.no_grad()
def write_shared_weights(layers: dict[str, nn.Module], shared: dict[str, SharedLayer]) -> None:
    """Copy each codebook's weights into its layer."""
    for name, book in shared.items():
        layers[name].weight.copy_(book.weight())


def set_centroid_gradients(layers: dict[str, nn.Module], shared: dict[str, SharedLayer]) -> None:
    """After backward through the network: give each codebook the summed gradients of its layer's weights."""
    for name, book in shared.items():
        book.centroids.grad = book.gradient(layers[name].weight.grad)
