"""Sample quality: the Frechet distance of features (FID) and the Inception-Score analogue, on a feature
network of our own (LeNet-5 for MNIST) or on an Inception network the user supplies.

    FID = |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2))          (Heusel et al. 2017, "GANs trained
                                                                        by a two time-scale update rule")
    IS  = exp(E_x KL(p(y|x) || p(y)))                                  (Salimans et al. 2016)

where (mu, S) are the mean and covariance of the feature vectors of real (r) and generated (g) images,
and p(y|x) a classifier's class probabilities. Both are computed in float64 from running sums, so any
number of samples fits in memory.

Two feature networks, chosen by `metrics.network`:

- `lenet`: our LeNet-5, trained on MNIST by our own classify trainer (shared/classify.py). Features are the
  input of its classifier head (F6 after ReLU, 84 numbers), probabilities its softmax. The numbers are a
  **LeNet-FID** and a **LeNet-IS** (logged as `samples/fid_lenet`, `samples/is_lenet`): comparable between
  pixlab runs scored by the same classifier, never with the Inception-FID or Inception Score of papers.
  `metrics.classifier` names a classify run folder or checkpoint; when it is null the trainer trains a
  LeNet-5 itself for `metrics.classifier_epochs` epochs through `shared.classify.train` and caches it in
  `metrics.cache_dir` (default ~/.cache/pixlab/metrics), keyed by a hash of its recipe. The cache file is
  written atomically and carries a SHA-256 digest of its weights: a corrupt or stale file is reported
  and rebuilt, never used.
- `inception`: the Inception network of FID papers, from a local **TorchScript** file named by
  `metrics.inception_weights` (e.g. NVIDIA's inception-2015-12-05.pt from the StyleGAN2-ADA metrics,
  which clean-fid uses too). The file's module is called as `net(x, return_features=True)` -> (B, D)
  pool features and `net(x)` -> (B, K) class probabilities, x float (B, 3, H, W) in [0, 255] (it resizes
  to 299x299 itself); grey images are repeated to 3 channels. Logged as `samples/fid_inception`,
  `samples/is_inception`. The IS uses the file's default softmax (the original TF code left the output
  bias out), and one split, so it is close to but not exactly the published protocol.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.config import load_config, require
from shared.data import ImageData
from shared.errors import ConfigError, PixlabError
from shared.rng import stream
from shared.run import capture_rng, latest_checkpoint, load_checkpoint, restore_rng
from shared.tracking import read_metrics

CACHE_FORMAT = 1


@dataclass
class MetricsConfig:
    network: Literal["lenet", "inception", "none"] = "lenet"  # the feature network; none: no FID/IS
    every: Literal["epoch", "end"] = "epoch"  # score samples after every epoch, or once at the end
    num_samples: int = 10_000  # generated images per score (FID is biased upward at small counts)
    reference: Literal["test", "train"] = "test"  # the real images whose statistics FID compares with
    batch_size: int = 500  # images per feature-network forward
    classifier: Optional[str] = None  # lenet: a classify run folder or checkpoint; null: train and cache one
    cache_dir: Optional[str] = None  # lenet, null classifier: default $XDG_CACHE_HOME or ~/.cache, /pixlab/metrics
    classifier_epochs: int = 3  # lenet, null classifier: epochs of the cached LeNet-5 (about 1% test error)
    classifier_max_steps: Optional[int] = None  # lenet, null classifier: stop it earlier (tests)
    inception_weights: Optional[str] = None  # inception: a TorchScript file, e.g. inception-2015-12-05.pt


def check_metrics_config(cfg: MetricsConfig, dataset: str) -> None:
    """Range checks for the `metrics` section of a generative config reading `dataset`."""
    require(
        cfg.num_samples >= 2, "metrics.num_samples", "must be >= 2 (a covariance needs two samples)", cfg.num_samples
    )
    require(cfg.batch_size > 0, "metrics.batch_size", "must be > 0", cfg.batch_size)
    require(cfg.classifier_epochs > 0, "metrics.classifier_epochs", "must be > 0", cfg.classifier_epochs)
    require(
        (cfg.classifier_max_steps or 1) > 0,
        "metrics.classifier_max_steps",
        "must be > 0 or null",
        cfg.classifier_max_steps,
    )
    require(
        cfg.network != "lenet" or dataset == "mnist",
        "metrics.network",
        f"'lenet' scores MNIST samples only (data.name is {dataset!r}); use 'inception' with metrics.inception_weights, or 'none'",
        cfg.network,
    )
    require(
        cfg.network != "inception" or bool(cfg.inception_weights),
        "metrics.inception_weights",
        "must name a TorchScript Inception file (e.g. inception-2015-12-05.pt) when metrics.network is 'inception'",
        cfg.inception_weights,
    )


# --------------------------------------------------------------------- the two scores
def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(cov1 + cov2 - 2 (cov1 cov2)^(1/2)) for means (D,) and covariances (D, D), in float64.

    cov1 cov2 is not symmetric, but it is similar to cov1^(1/2) cov2 cov1^(1/2), which is symmetric positive
    semi-definite: the trace of the square root is the sum of the square roots of that matrix's eigenvalues.
    Two symmetric eigendecompositions, no general sqrtm and no complex parts to discard; eigenvalues that
    rounding makes slightly negative are clamped to 0.
    """
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    values, vectors = torch.linalg.eigh((cov1 + cov1.T) / 2)
    sqrt1 = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    middle = sqrt1 @ cov2 @ sqrt1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt).item()


def inception_score(probs: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities (N, K), p(y) their mean over x: from 1 to K."""
    stats = FeatureStats()
    stats.update(probs.new_zeros(len(probs), 1), probs)
    return stats.inception_score()


class FeatureStats:
    """Running sums of feature vectors (for their mean and covariance) and of class probabilities (for IS).

    IS = exp(H(p(y)) - E_x H(p(y|x))), the same quantity as exp(E_x KL(p(y|x) || p(y))), needs only the
    sum of p(y|x) and the sum of their negative entropies, so nothing per image is kept.
    """

    def __init__(self) -> None:
        self.count = 0
        self.sum: Optional[torch.Tensor] = None  # (D,) float64
        self.outer: Optional[torch.Tensor] = None  # (D, D) float64, sum of x x^T
        self.prob_sum: Optional[torch.Tensor] = None  # (K,) float64
        self.neg_entropy_sum = 0.0  # sum over x of sum_y p(y|x) log p(y|x), nats

    def update(self, features: torch.Tensor, probs: Optional[torch.Tensor] = None) -> None:
        """Add a batch: features (B, D), class probabilities (B, K) or None."""
        f = features.detach().double()
        if self.sum is None:
            self.sum, self.outer = f.new_zeros(f.shape[1]), f.new_zeros(f.shape[1], f.shape[1])
        self.sum += f.sum(0)
        self.outer += f.T @ f
        self.count += len(f)
        if probs is not None:
            p = probs.detach().double()
            self.prob_sum = p.sum(0) if self.prob_sum is None else self.prob_sum + p.sum(0)
            self.neg_entropy_sum += torch.special.xlogy(p, p).sum().item()

    def mean_cov(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean (D,) and unbiased covariance (D, D) of the features seen, float64."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mean = self.sum / self.count
        cov = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, cov

    def inception_score(self) -> float:
        marginal = self.prob_sum / self.count  # p(y), (K,)
        marginal_entropy = -torch.special.xlogy(marginal, marginal).sum().item()
        return math.exp(marginal_entropy + self.neg_entropy_sum / self.count)


# --------------------------------------------------------------------- feature networks
class FeatureNetwork:
    """images (B, C, H, W) float in [0, 1] -> (features (B, D), class probabilities (B, K)), no grad."""

    name: str  # the suffix of the metric names: fid_<name>, is_<name>

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class ClassifierFeatures(FeatureNetwork):
    """A classify-trainer model (LeNet-5 on MNIST): features are the input of its head, probabilities its softmax.

    Images are zero-padded to the classifier's input size (MNIST 28x28 -> 32x32, as the classify trainer
    pads them; a 32x32 DCGAN sample is used as it is) and normalised with the dataset's mean and std.
    """

    name = "lenet"

    def __init__(self, model: nn.Module, input_size: int, mean: tuple, std: tuple, test_error: Optional[float]) -> None:
        self.model = model.eval().requires_grad_(False)
        self.input_size = input_size
        self.mean, self.std = mean, std
        self.test_error = test_error  # of the classifier on the MNIST test set, for the report
        self._captured: list[torch.Tensor] = []
        head = model.get_submodule(type(model).head)
        head.register_forward_pre_hook(lambda module, args: self._captured.append(args[0]))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        margin = self.input_size - images.shape[-1]
        if margin < 0 or margin % 2 or images.shape[-2] != images.shape[-1]:
            raise ValueError(
                f"cannot pad {tuple(images.shape[-2:])} images to the classifier's {self.input_size}x{self.input_size}"
            )
        x = F.pad(images.float(), (margin // 2,) * 4)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        self._captured.clear()
        logits = self.model((x - mean) / std)
        return self._captured.pop().flatten(1), logits.float().softmax(1)


class TorchScriptFeatures(FeatureNetwork):
    """An Inception network from a TorchScript file (see the module docstring for the calling convention)."""

    name = "inception"

    def __init__(self, path: str, device: torch.device, channels: int, image_size: int) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise ConfigError(
                f"metrics.inception_weights={path!r}: no such file. Give the path of a TorchScript Inception file (e.g. inception-2015-12-05.pt)"
            )
        try:
            self.net = torch.jit.load(str(self.path), map_location=device).eval()
        except Exception as e:  # torch raises RuntimeError or ValueError for a file that is not TorchScript
            raise ConfigError(
                f"metrics.inception_weights={path!r} is not a TorchScript file that torch.jit.load can read ({_first_line(e)})"
            ) from None
        probe = torch.rand(2, channels, image_size, image_size, device=device)
        try:
            features, probs = self(probe)
        except Exception as e:
            raise ConfigError(
                f"metrics.inception_weights={path!r}: calling it as net(x, return_features=True) and net(x) on "
                f"(2, 3, {image_size}, {image_size}) images in [0, 255] failed ({_first_line(e)})"
            ) from None
        if features.dim() != 2 or probs.dim() != 2 or len(features) != 2 or len(probs) != 2:
            raise ConfigError(
                f"metrics.inception_weights={path!r} returned {tuple(features.shape)} features and {tuple(probs.shape)} probabilities for 2 images; expected (2, D) and (2, K)"
            )
        if not torch.allclose(
            probs.double().sum(1), torch.ones(2, dtype=torch.float64, device=probs.device), atol=1e-3
        ):
            raise ConfigError(
                f"metrics.inception_weights={path!r}: net(x) must return class probabilities (rows summing to 1)"
            )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.float().expand(-1, 3, -1, -1) * 255  # grey repeated to RGB; the file expects [0, 255]
        return self.net(x, return_features=True).flatten(1), self.net(x)


# --------------------------------------------------------------------- the LeNet-5 classifier, given or cached
def load_classifier_run(path: str, device: torch.device) -> ClassifierFeatures:
    """The classifier of a classify run: `path` is its folder (latest checkpoint) or one of its checkpoints."""
    from shared.classify import ClassifyConfig
    from shared.models import build_model

    source = Path(path).expanduser()
    checkpoint_path = latest_checkpoint(source) if source.is_dir() else source
    if checkpoint_path is None or not checkpoint_path.exists():
        raise ConfigError(
            f"metrics.classifier={path!r}: no checkpoint there; give a classify run folder or a checkpoint file"
        )
    run_dir = checkpoint_path.parent.parent if not source.is_dir() else source
    _, cfg = load_config(run_dir / "config.yaml")
    if not isinstance(cfg, ClassifyConfig) or cfg.data.name != "mnist":
        raise ConfigError(
            f"metrics.classifier={path!r} is not a classify run on MNIST (its config is algo={cfg.algo!r})"
        )
    model = build_model(cfg.model.name, 10, in_channels=1).to(device)
    state = load_checkpoint(checkpoint_path, map_location=device)["state"]
    model.load_state_dict(state["ema"]["module"] if "ema" in state else state["model"])
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    summaries = [r["summary"] for r in records if "summary" in r]
    test_error = summaries[-1].get("test/error") if summaries else None
    return ClassifierFeatures(model, 28 + 2 * cfg.data.pad, *_mnist_normalisation(), test_error=test_error)


def cached_classifier(cfg: MetricsConfig, data_root: Optional[str], device: torch.device) -> ClassifierFeatures:
    """The cached LeNet-5 of this recipe, trained (through shared.classify) and cached first if need be."""
    from shared.models import build_model

    recipe = classifier_recipe(cfg, data_root, device)
    key = recipe_key(recipe)
    path = cache_folder(cfg) / f"lenet5-mnist-{key}.pt"
    entry = read_cache(path, key)
    if entry is None:
        entry = build_cache(recipe, path, key)
    model = build_model("lenet5", 10, in_channels=1).to(device)
    model.load_state_dict(entry["model"])
    return ClassifierFeatures(model, 28 + 2 * recipe.data.pad, *_mnist_normalisation(), test_error=entry["test_error"])


def classifier_recipe(cfg: MetricsConfig, data_root: Optional[str], device: torch.device):
    """The classify config that trains the cached LeNet-5: configs/classify/lenet5_mnist.yaml, fewer epochs."""
    from shared.classify import ClassifyConfig, ClassifyDataConfig, ClassifyModelConfig, ClassifyTrainConfig
    from shared.config import CheckpointConfig, TrackingConfig
    from shared.train.optim import OptimConfig, ScheduleConfig

    return ClassifyConfig(
        name="lenet5-mnist-fid",
        seed=0,
        device=device.type,
        data=ClassifyDataConfig(name="mnist", root=data_root, pad=2),
        model=ClassifyModelConfig(name="lenet5"),
        optim=OptimConfig(name="adamw", lr=0.002, weight_decay=0.2),
        schedule=ScheduleConfig(name="cosine"),
        train=ClassifyTrainConfig(epochs=cfg.classifier_epochs, batch_size=128, max_steps=cfg.classifier_max_steps),
        tracking=TrackingConfig(wandb="disabled", log_every=100),
        checkpoint=CheckpointConfig(every=10**9, keep_last=1),
    )


def recipe_key(recipe) -> str:
    """16 hex digits naming what shapes the weights: the recipe without where data and runs live, and torch's version."""
    from shared.config import to_yaml

    fields = to_yaml(recipe).splitlines()
    shaping = [line for line in fields if not line.lstrip().startswith(("root:", "runs_dir:", "download:", "device:"))]
    text = "\n".join(shaping) + f"\ntorch {torch.__version__.split('+')[0]}\nformat {CACHE_FORMAT}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_folder(cfg: MetricsConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixlab" / "metrics"


def weights_digest(state: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_cache(path: Path, key: str) -> Optional[dict]:
    """The cache entry at `path` if it is whole and of this recipe; None (with a note on stderr) otherwise."""
    if not path.exists():
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        problem = None
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            problem = "not a pixlab classifier cache"
        elif entry.get("key") != key:
            problem = f"stale: made by recipe {entry.get('key')}, not {key}"
        elif entry.get("digest") != weights_digest(entry["model"]):
            problem = "its weights do not match their SHA-256 digest"
    except Exception as e:  # a torn or overwritten file: torch raises several kinds
        problem = f"unreadable ({_first_line(e)})"
    if problem is None:
        return entry
    print(f"pixlab: classifier cache {path} is {problem}; training a new LeNet-5 in its place", file=sys.stderr)
    return None


def build_cache(recipe, path: Path, key: str) -> dict:
    """Train a LeNet-5 with `shared.classify.train` in a scratch run folder and cache its weights atomically."""
    from shared import classify
    from shared.run import Run, atomic_torch_save

    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.parent / f".build-{key}-{os.getpid()}"
    recipe.runs_dir = str(scratch)
    budget = f"{recipe.train.epochs} epochs" + (
        f", at most {recipe.train.max_steps} steps" if recipe.train.max_steps else ""
    )
    print(
        f"pixlab: training the LeNet-5 feature network for LeNet-FID ({budget}); it is cached in {path}",
        file=sys.stderr,
    )
    try:
        with Run.create(recipe, argv=["generative.metrics: LeNet-5 for LeNet-FID"]) as inner:
            classify.train(recipe, inner)
        if inner.should_stop:
            raise Interrupted(inner.stop_signal)
        checkpoint = load_checkpoint(latest_checkpoint(inner.dir))
        summary = read_metrics(inner.dir / "metrics.jsonl")[-1]["summary"]
        model = checkpoint["state"]["model"]
        entry = {
            "format": CACHE_FORMAT,
            "key": key,
            "model": model,
            "digest": weights_digest(model),
            "test_error": float(summary["test/error"]),
        }
        atomic_torch_save(entry, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return entry


class Interrupted(PixlabError):
    """A signal arrived while the feature network was being trained: nothing was cached."""

    def __init__(self, signum: int) -> None:
        super().__init__(
            f"stopped by signal {signum} while training the LeNet-5 feature network; nothing was cached or checkpointed"
        )
        self.exit_code = 128 + signum


def feature_network(
    cfg: MetricsConfig, data_root: Optional[str], device: torch.device, channels: int, image_size: int
) -> FeatureNetwork:
    """The feature network `cfg.network` names (not 'none'), made without a trace in the global RNGs.

    Building one draws random numbers (initialisations, a probe batch, and Run.create's reseeding when the
    LeNet-5 is trained): a run's training must not depend on whether the classifier was cached already.
    """
    rng = capture_rng()
    try:
        if cfg.network == "inception":
            return TorchScriptFeatures(cfg.inception_weights, device, channels, image_size)
        if cfg.classifier:
            return load_classifier_run(cfg.classifier, device)
        return cached_classifier(cfg, data_root, device)
    finally:
        restore_rng(rng)


# --------------------------------------------------------------------- scoring generated images
class SampleScorer:
    """FID and IS of a generator's samples against real images, with the real statistics computed once.

    `score(sample)` calls `sample(noise_generator, n)` -> n images (n, C, H, W) float in [0, 1] until
    `num_samples` images are scored; the generator is seeded the same way every time, so successive
    scores of one run see the same latent draws, and the global RNGs are never touched.
    """

    def __init__(
        self, cfg: MetricsConfig, data: ImageData, data_root: Optional[str], device: torch.device, seed: int
    ) -> None:
        self.cfg, self.device, self.seed = cfg, device, seed
        channels, size = data.train.images.shape[1:3]
        self.net = feature_network(cfg, data_root, device, channels, size)
        real = data.test.images if cfg.reference == "test" else data.train.images
        self.real = self._stats(real[i : i + cfg.batch_size] for i in range(0, len(real), cfg.batch_size))
        self.real_mean_cov = self.real.mean_cov()

    def _stats(self, batches) -> FeatureStats:
        stats = FeatureStats()
        for images in batches:
            if images.dtype == torch.uint8:
                images = images.to(self.device).float().div(255)
            stats.update(*self.net(images))
        return stats

    def score(self, sample: Callable[[torch.Generator, int], torch.Tensor]) -> dict:
        """{'samples/fid_<net>': ..., 'samples/is_<net>': ...} of `num_samples` images from `sample`."""
        generator = stream(self.seed, "sample scoring", device=self.device)
        n, size = self.cfg.num_samples, self.cfg.batch_size
        stats = self._stats(sample(generator, min(size, n - first)) for first in range(0, n, size))
        return {
            f"samples/fid_{self.net.name}": frechet_distance(*stats.mean_cov(), *self.real_mean_cov),
            f"samples/is_{self.net.name}": stats.inception_score(),
        }

    def reference(self, data: ImageData) -> dict:
        """What real images score, the floor and ceiling of a run's figures: FID of `num_samples` images of the
        other split against the reference set, and IS of the reference set."""
        other = data.train.images if self.cfg.reference == "test" else data.test.images
        n = min(self.cfg.num_samples, len(other))
        stats = self._stats(other[i : min(i + self.cfg.batch_size, n)] for i in range(0, n, self.cfg.batch_size))
        name = self.net.name
        values = {
            f"samples/fid_{name}_real": frechet_distance(*stats.mean_cov(), *self.real_mean_cov),
            f"samples/is_{name}_real": self.real.inception_score(),
            "samples/num_samples": self.cfg.num_samples,
        }
        if getattr(self.net, "test_error", None) is not None:
            values[f"samples/{name}_test_error"] = self.net.test_error
        return values


def _mnist_normalisation() -> tuple[tuple, tuple]:
    from shared.data.mnist import MEAN, STD

    return MEAN, STD


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
