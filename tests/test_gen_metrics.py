"""Sample-quality metrics: FID and the IS analogue against closed forms, the cached LeNet-5 classifier
(corrupt and stale caches rebuilt, never used), and the TorchScript Inception path on a stand-in network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from conftest import CONFIGS, only_run_dir

from generative.metrics import (
    FeatureStats,
    MetricsConfig,
    TorchScriptFeatures,
    feature_network,
    frechet_distance,
    inception_score,
    read_cache,
    weights_digest,
)
from shared.cli import main
from shared.errors import ConfigError
from shared.run import atomic_torch_save, latest_checkpoint
from shared.tracking import read_metrics

# TorchScript is deprecated in this torch but still reads; it is the format the Inception files come in.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def random_features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def stats_of(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    stats = FeatureStats()
    for chunk in features.split(300):  # several updates, as the scorer makes them
        stats.update(chunk)
    return stats.mean_cov()


def test_running_statistics_equal_the_direct_mean_and_covariance():
    features = random_features(1000, 6, seed=0)
    mean, cov = stats_of(features)
    assert torch.allclose(mean, features.mean(0), atol=1e-12)
    assert torch.allclose(cov, torch.cov(features.T), atol=1e-10)


def test_fid_of_a_set_with_itself_is_zero_and_a_mean_shift_gives_its_squared_length():
    mean, cov = stats_of(random_features(2000, 8, seed=1))
    assert abs(frechet_distance(mean, cov, mean, cov)) < 1e-9
    shift = torch.tensor([1.0, -2.0, 0.5, 0, 0, 0, 0, 3.0], dtype=torch.float64)
    assert frechet_distance(mean, cov, mean + shift, cov) == pytest.approx(
        shift.square().sum().item(), abs=1e-8
    )  # 14.25


def test_fid_of_diagonal_covariances_has_its_closed_form():
    # Commuting covariances: tr(S1 + S2 - 2 (S1 S2)^(1/2)) = sum (sqrt(a_i) - sqrt(b_i))^2.
    a, b = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    mu1, mu2 = torch.zeros(3), torch.tensor([0.0, 1.0, 0.0])
    expected = 1.0 + ((a.sqrt() - b.sqrt()) ** 2).sum().item()  # 1 + 1 + 1 + 6.25
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, abs=1e-10)


def test_fid_grows_with_a_shift_of_the_samples():
    real = random_features(2000, 5, seed=2)
    near = stats_of(real + 0.1)
    far = stats_of(real * 1.5 + 1.0)
    mean, cov = stats_of(real)
    assert 0 < frechet_distance(*near, mean, cov) < frechet_distance(*far, mean, cov)


def test_is_analogue_is_one_for_constant_predictions_and_k_for_confident_uniform_ones():
    assert inception_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0, abs=1e-12)
    assert inception_score(torch.tensor([0.7, 0.2, 0.1]).repeat(40, 1)) == pytest.approx(1.0, abs=1e-12)
    assert inception_score(torch.eye(10).repeat(7, 1)) == pytest.approx(10.0, rel=1e-12)


def test_is_analogue_equals_exp_of_the_mean_kl_to_the_marginal():
    probs = torch.softmax(random_features(200, 5, seed=3), dim=1)
    marginal = probs.mean(0)
    kl = (probs * (probs.log() - marginal.log())).sum(1)
    assert inception_score(probs) == pytest.approx(math.exp(kl.mean().item()), rel=1e-10)


# --------------------------------------------------------------------- the classifier cache
def cache_entry(key: str, tamper: bool = False) -> dict:
    model = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    digest = weights_digest(model)
    if tamper:
        model["w"][0, 0] = 99.0
    return {"format": 1, "key": key, "model": model, "digest": digest, "test_error": 0.01}


def test_cache_reader_accepts_a_whole_file_and_refuses_corrupt_or_stale_ones(tmp_path, capsys):
    path = tmp_path / "lenet5-mnist-abc.pt"
    assert read_cache(path, "abc") is None  # absent: nothing to say
    atomic_torch_save(cache_entry("abc"), path)
    assert read_cache(path, "abc")["test_error"] == 0.01

    cases = {
        "stale: made by recipe old, not abc": lambda: atomic_torch_save(cache_entry("old"), path),
        "its weights do not match their SHA-256 digest": lambda: atomic_torch_save(
            cache_entry("abc", tamper=True), path
        ),
        "unreadable": lambda: path.write_bytes(path.read_bytes()[:100]),  # a torn file
        "not a pixlab classifier cache": lambda: torch.save({"format": 7}, path),
    }
    for problem, damage in cases.items():
        atomic_torch_save(cache_entry("abc"), path)
        damage()
        capsys.readouterr()
        assert read_cache(path, "abc") is None, problem
        assert f"classifier cache {path} is {problem}" in capsys.readouterr().err


def test_a_corrupt_cached_classifier_is_rebuilt_through_the_classify_trainer(tmp_path, mnist_root, capsys):
    cfg = MetricsConfig(cache_dir=str(tmp_path), classifier_epochs=1, classifier_max_steps=20)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = feature_network(cfg, str(mnist_root), torch.device("cpu"), channels=1, image_size=28)
    assert torch.equal(torch.get_rng_state(), before)  # training it left the caller's RNG alone
    (path,) = tmp_path.glob("lenet5-mnist-*.pt")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the scratch run folder is gone
    assert 0 < first.test_error < 0.9

    path.write_bytes(b"not a checkpoint at all")
    capsys.readouterr()
    rebuilt = feature_network(cfg, str(mnist_root), torch.device("cpu"), channels=1, image_size=28)
    err = capsys.readouterr().err
    assert f"classifier cache {path} is unreadable" in err and "training a new LeNet-5" in err
    assert read_cache(path, path.stem.split("-")[-1]) is not None
    for name, tensor in first.model.state_dict().items():  # the same recipe and seed: the same weights
        assert torch.equal(tensor, rebuilt.model.state_dict()[name]), name


def test_a_classify_run_can_be_named_as_the_feature_network(tmp_path, mnist_root):
    args = [f"data.root={mnist_root}", "train.max_steps=5", "tracking.wandb=disabled", f"runs_dir={tmp_path / 'runs'}"]
    assert main(["train", str(CONFIGS / "classify" / "lenet5_mnist.yaml"), *args]) == 0
    run = only_run_dir(tmp_path / "runs")
    images = torch.rand(3, 1, 28, 28)
    by_folder = feature_network(MetricsConfig(classifier=str(run)), None, torch.device("cpu"), 1, 28)
    by_file = feature_network(MetricsConfig(classifier=str(latest_checkpoint(run))), None, torch.device("cpu"), 1, 28)
    features, probs = by_folder(images)
    assert features.shape == (3, 84) and (features >= 0).all()  # F6 after its ReLU: the input of the head
    assert torch.allclose(probs.sum(1), torch.ones(3)) and torch.equal(by_file(images)[0], features)
    assert by_folder.test_error == read_metrics(run / "metrics.jsonl")[-1]["summary"]["test/error"]

    with pytest.raises(ConfigError, match="metrics.classifier='.*nowhere': no checkpoint there"):
        feature_network(MetricsConfig(classifier=str(tmp_path / "nowhere")), None, torch.device("cpu"), 1, 28)


# --------------------------------------------------------------------- the Inception path, on a stand-in
class StandIn(nn.Module):
    """Inception's calling convention on a tiny network: x (B, 3, H, W) in [0, 255]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classes = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = self.features(x / 255)
        if return_features:
            return f
        return self.classes(f).softmax(1)


def test_a_torchscript_inception_file_is_loaded_and_called_as_documented(tmp_path):
    torch.manual_seed(0)
    module = StandIn().eval()
    path = tmp_path / "stand-in-inception.pt"
    torch.jit.script(module).save(str(path))
    net = TorchScriptFeatures(str(path), torch.device("cpu"), channels=1, image_size=28)
    grey = torch.rand(6, 1, 28, 28)
    features, probs = net(grey)
    with torch.no_grad():
        rgb = grey.expand(-1, 3, -1, -1) * 255
        assert torch.allclose(features, module(rgb, return_features=True), atol=1e-6)
        assert torch.allclose(probs, module(rgb), atol=1e-6)
    assert net.name == "inception" and features.shape == (6, 4) and probs.shape == (6, 5)


def test_a_missing_or_wrong_inception_file_is_a_clear_error_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    with pytest.raises(ConfigError, match=f"metrics.inception_weights='{missing}': no such file"):
        TorchScriptFeatures(str(missing), torch.device("cpu"), 3, 32)

    garbage = tmp_path / "garbage.pt"
    torch.save({"not": torch.zeros(1)}, garbage)  # a state dict, not TorchScript
    with pytest.raises(ConfigError, match=f"metrics.inception_weights='{garbage}' is not a TorchScript file"):
        TorchScriptFeatures(str(garbage), torch.device("cpu"), 3, 32)

    class Logits(nn.Module):  # returns logits, not probabilities
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.mean((2, 3)) if return_features else x.mean((2, 3)) * 10

    wrong = tmp_path / "logits.pt"
    torch.jit.script(Logits()).save(str(wrong))
    with pytest.raises(ConfigError, match="must return class probabilities"):
        TorchScriptFeatures(str(wrong), torch.device("cpu"), 3, 32)
