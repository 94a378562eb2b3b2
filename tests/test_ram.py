"""The Recurrent Attention Model classifier: its hybrid loss by hand, shapes, and a tiny run through the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, only_run_dir, run_cli
from wandb_records import offline_run

from rl.ram import Glimpses, RAMConfig, RecurrentAttention, combine_paths, evaluate_split, hybrid_loss
from shared.data import Split
from shared.models.glimpse import GlimpseConfig
from shared.tracking import read_metrics


def train_run(args: list[str], tmp_path) -> tuple:
    """`pixlab ARGS` must succeed; its run folder and the records of its metrics.jsonl."""
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path / "runs")
    return run, read_metrics(run / "metrics.jsonl")


def test_hybrid_loss_matches_hand_computation():
    out = Glimpses(
        logits=torch.tensor([[2.0, 0.0], [0.0, 1.0]]),  # image 0 right (class 0), image 1 wrong
        log_probs=torch.tensor([[-1.0, -0.5], [-2.0, -1.0]]),
        baselines=torch.tensor([[0.5, 0.75], [0.25, 0.0]]),
        locations=torch.zeros(2, 3, 2),
    )
    loss, parts = hybrid_loss(out, torch.tensor([0, 0]))
    nll = F.cross_entropy(out.logits, torch.tensor([0, 0])).item()
    # rewards (1, 0); REINFORCE: -mean_i sum_t (R_i - b_it) log pi_it
    reinforce = -(((1 - 0.5) * -1.0 + (1 - 0.75) * -0.5) + ((0 - 0.25) * -2.0 + (0 - 0.0) * -1.0)) / 2
    mse = (((0.5 - 1) ** 2 + (0.75 - 1) ** 2) + (0.25**2 + 0.0**2)) / 2
    assert parts["reward"].item() == 0.5
    assert parts["reinforce"].item() == pytest.approx(reinforce)
    assert parts["baseline_mse"].item() == pytest.approx(mse)
    assert loss.item() == pytest.approx(nll + reinforce + mse)


# One image's class probabilities along three glimpse paths: two lean to class 0, the third all but rules it out.
VETO = [[0.98, 0.02], [0.98, 0.02], [1e-6, 1 - 1e-6]]


def test_combining_paths_by_mean_probability_or_mean_log_probability():
    log_p = torch.tensor(VETO, dtype=torch.float64).log()[:, None, :]  # (paths, B=1, classes)
    by_prob = combine_paths(log_p, "prob")[0].exp()
    assert by_prob.tolist() == pytest.approx([(0.98 + 0.98 + 1e-6) / 3, (0.02 + 0.02 + 1 - 1e-6) / 3])
    g0, g1 = (0.98 * 0.98 * 1e-6) ** (1 / 3), (0.02 * 0.02 * (1 - 1e-6)) ** (1 / 3)  # geometric means
    by_log_prob = combine_paths(log_p, "log_prob")[0].exp()
    assert by_log_prob.tolist() == pytest.approx([g0 / (g0 + g1), g1 / (g0 + g1)])
    assert by_prob.argmax().item() == 0 and by_log_prob.argmax().item() == 1  # the third path's veto


class FixedPaths(torch.nn.Module):
    """A stand-in model whose path j (row j of the repeated batch of one image) gives class probabilities VETO[j]."""

    def forward(self, x, generator=None):
        return SimpleNamespace(logits=torch.tensor(VETO)[: x.shape[0]].log())


@pytest.mark.parametrize(
    "average, samples, errors",
    [("prob", None, 0), ("log_prob", None, 1), ("log_prob", 2, 0)],  # samples=2: the first two paths, no veto
)
def test_evaluation_combines_the_paths_it_is_given_as_configured(average, samples, errors):
    cfg = RAMConfig()
    cfg.train.eval_samples, cfg.train.eval_average = 3, average  # `samples`, when given, comes before eval_samples
    split = Split(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), torch.tensor([0]))
    assert evaluate_split(FixedPaths(), split, cfg, samples)["errors"] == errors


def test_bad_eval_average_exits_2_naming_the_key(tmp_path):
    result = run_cli("train", str(CONFIGS / "ram" / "mnist.yaml"), "train.eval_average=mean", cwd=tmp_path)
    assert result.returncode == 2 and "train.eval_average" in result.stderr and not (tmp_path / "runs").exists()


def test_model_takes_the_configured_glimpses_and_gradients_reach_every_part():
    torch.manual_seed(0)
    model = RecurrentAttention(1, 10, GlimpseConfig(glimpses=6, patch=8, scales=2))
    out = model(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(1))
    assert out.logits.shape == (4, 10) and out.locations.shape == (4, 6, 2)
    assert out.log_probs.shape == (4, 5) and out.baselines.shape == (4, 5)
    loss, _ = hybrid_loss(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    again = model(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(1))
    assert torch.equal(again.locations[:, 0], out.locations[:, 0])  # the generator fixes the path's randomness


def test_reinforce_term_trains_the_location_layer_and_nothing_else():
    # the sampled locations are actions: log pi's gradient reaches the location layer; the core and the glimpse
    # network see neither it nor, along the sampled path, any other loss (a sample left attached gives the
    # location layer no REINFORCE gradient at all: log N(mean + std * noise; mean) does not depend on mean)
    torch.manual_seed(0)
    model = RecurrentAttention(1, 10, GlimpseConfig(glimpses=3, patch=8))
    out = model(torch.rand(4, 1, 28, 28), torch.Generator().manual_seed(1))
    out.log_probs.sum().backward()
    assert model.locate.mean.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*model.core.parameters(), *model.glimpse.parameters()])
    assert not out.locations.requires_grad


def test_tiny_translated_run_through_the_cli(tmp_path, mnist_root):
    config = str(CONFIGS / "ram" / "translated60.yaml")
    args = [
        "train",
        config,
        f"task.root={mnist_root}",
        "task.clutter=4",
        "train.max_steps=20",
        "train.batch_size=16",
        "train.eval_samples=2",
        "task.test_limit=300",
        "train.paths_to_plot=4",
        "tracking.log_every=10",
        "checkpoint.every=10",
    ]
    run, records = train_run(args, tmp_path)
    assert [r["step"] for r in records if "train/loss" in r] == [10, 20]
    tests = [r for r in records if "test/error" in r]
    assert [r["step"] for r in tests] == [20]
    errors = tests[0]["test/errors"]
    assert tests[0]["test/error"] == errors / 300  # counted over the first task.test_limit = 300 test images
    assert 150 < errors <= 300  # 20 steps teach it no digits: near chance (90%), and an error, not an accuracy
    assert records[-1]["summary"]["test/error"] == tests[0]["test/error"]
    paths = sorted((run / "media").glob("test_glimpse_paths-*.png"))
    assert len(paths) == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000000010.pt", "step-000000020.pt"]
    written = offline_run(run)
    assert written["config"]["task"]["canvas"] == 60 and written["summary"]["test/error"] == tests[0]["test/error"]

    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test/error"] == tests[0]["test/error"]  # the same fixed test paths


def test_bad_task_exits_2_naming_the_key(tmp_path):
    result = run_cli("train", str(CONFIGS / "ram" / "mnist.yaml"), "task.clutter=4", cwd=tmp_path)
    assert result.returncode == 2 and "task.clutter" in result.stderr and not (tmp_path / "runs").exists()


def test_selection_on_the_validation_split_reports_the_best_weights_and_stops_early(tmp_path, mnist_root):
    steps_per_epoch, patience = 3, 2
    args = [
        "train",
        str(CONFIGS / "ram" / "mnist.yaml"),
        f"task.root={mnist_root}",
        "task.val_size=64",
        "task.train_limit=96",
        "task.test_limit=64",
        "train.batch_size=32",
        "train.epochs=12",
        "train.eval_samples=2",
        "train.paths_to_plot=0",
        "train.select=best",
        f"train.patience={patience}",
        "optim.lr=0.01",
        "schedule.name=constant",
        "checkpoint.every=100",
    ]
    run, records = train_run(args, tmp_path)
    epochs = [r for r in records if "val/error" in r]
    steps = [r["step"] for r in epochs]
    assert steps == list(range(steps_per_epoch, steps[-1] + 1, steps_per_epoch))  # every epoch, on 64 held-out images
    assert all(r["val/errors"] == round(r["val/error"] * 64) for r in epochs)
    best = min(epochs, key=lambda r: r["val/error"])  # the first of equals
    summary = records[-1]["summary"]
    assert summary["train/best_step"] == best["step"] and summary["val/best_error"] == best["val/error"]
    assert summary["test/error"] == best["test/error"]  # the best weights' test error, not the last weights'
    if steps[-1] < 12 * steps_per_epoch:  # stopped early: exactly `patience` epochs after the best
        assert steps[-1] == best["step"] + patience * steps_per_epoch
    evaluated = run_cli("eval", str(run), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test/error"] == summary["test/error"]  # eval scores the selected weights


def test_the_plateau_schedule_reads_the_validation_error_not_its_nll(monkeypatch):
    import rl.ram as ram

    scores, paths = {"error": 0.25, "errors": 16, "nll": 0.7}, []
    monkeypatch.setattr(ram, "evaluate_split", lambda model, split, cfg, samples=None: paths.append(samples) or scores)
    observed, logged = [], []
    schedule = SimpleNamespace(observe=observed.append)
    run = SimpleNamespace(log=lambda metrics, step: logged.append((metrics, step)))
    clock = SimpleNamespace(finished=False, step=6, steps_per_epoch=3)
    cfg = SimpleNamespace(train=SimpleNamespace(test_every=5, val_samples=7))  # epoch 2: no test due
    metrics = ram.end_of_epoch(None, "val", "test", cfg, run, clock, schedule, None)
    assert observed == [0.25] and paths == [7]  # validation with its own number of paths
    assert metrics == {"val/error": 0.25, "val/errors": 16, "val/nll": 0.7} and logged == [(metrics, 6)]


def test_selection_and_plateau_need_a_validation_split(tmp_path):
    for key, value in [("train.select", "best"), ("schedule.name", "plateau")]:
        result = run_cli("train", str(CONFIGS / "ram" / "mnist.yaml"), f"{key}={value}", cwd=tmp_path)
        assert result.returncode == 2 and key in result.stderr and "task.val_size" in result.stderr
        assert not (tmp_path / "runs").exists()
