"""Saliency, guided backprop, class models and the randomization sanity check (shared/saliency.py), and the
`pixlab explain` verb end to end on a tiny digits run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.saliency import (
    GuidedBackpropError,
    cascading_randomization,
    class_model,
    class_scores,
    guided_backprop,
    input_gradient,
    parameter_layers,
    saliency_map,
    sanity_check,
    spearman,
)


def linear_model(seed: int, channels: int = 2, side: int = 4, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, classes)).eval()


def test_saliency_of_a_linear_model_is_its_absolute_weights():
    model = linear_model(0)
    x = torch.randn(5, 2, 4, 4)
    classes = torch.tensor([0, 1, 2, 1, 0])
    maps = saliency_map(input_gradient(model, x, classes))
    weights = model[1].weight.detach().view(3, 2, 4, 4)
    assert torch.equal(maps, weights[classes].abs().amax(1))
    assert all(p.grad is None for p in model.parameters())


class ModuleReLUNet(nn.Module):
    """2 inputs -> 3 hidden (ReLU module) -> 1 score, with weights set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(2, 3, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.out = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 1.0], [2.0, -1.0]]))
            self.out.weight.copy_(torch.tensor([[-1.0, 2.0, 3.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.relu(self.hidden(x.flatten(1))))


class FunctionalReLUNet(ModuleReLUNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x.flatten(1))))


@pytest.mark.parametrize("net", [ModuleReLUNet, FunctionalReLUNet])
def test_guided_backprop_by_hand_and_the_model_unchanged(net):
    # x = (1, 1): hidden inputs (3, 0, 1), so the ReLU passes units 0 and 2 forward. The plain gradient
    # backs the out weights (-1, 2, 3) through units 0 and 2: -1 * (1, 2) + 3 * (2, -1) = (5, -5). Guided
    # backprop also drops unit 0's negative gradient: 3 * (2, -1) = (6, -3).
    model = net().eval()
    before = copy.deepcopy(model.state_dict())
    modules_before = [(name, type(m), getattr(m, "inplace", None)) for name, m in model.named_modules()]
    x = torch.ones(1, 1, 1, 2)
    classes = torch.tensor([0])
    assert input_gradient(model, x, classes).flatten().tolist() == [5.0, -5.0]
    assert guided_backprop(model, x, classes).flatten().tolist() == [6.0, -3.0]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [(name, type(m), getattr(m, "inplace", None)) for name, m in model.named_modules()] == modules_before
    assert input_gradient(model, x, classes).flatten().tolist() == [5.0, -5.0]  # plain ReLUs again


def test_guided_backprop_refuses_models_without_relu():
    tanh = nn.Sequential(nn.Flatten(), nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    with pytest.raises(GuidedBackpropError, match="calls tanh"):
        guided_backprop(tanh, torch.ones(1, 1, 1, 2), torch.tensor([0]))
    with pytest.raises(GuidedBackpropError, match="calls no ReLU"):
        guided_backprop(linear_model(0), torch.ones(1, 2, 4, 4), torch.tensor([0]))


def small_convnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, 3)
    ).eval()


def test_class_model_raises_the_class_score_and_stays_in_range():
    # Global average pooling makes the score nearly blind to the jitter's rolls, as a trained convnet's is.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    low, high = torch.tensor([-0.5]), torch.tensor([2.0])
    generator = torch.Generator().manual_seed(0)
    image = class_model(model, 1, (1, 8, 8), low, high, steps=20, step_size=0.2, generator=generator)
    target = torch.tensor([1])
    start = class_scores(model, torch.zeros(1, 1, 8, 8), target).item()
    assert class_scores(model, image[None], target).item() > start + 0.04  # 0.050 -> 0.097
    assert image.min() == -0.5 and image.max() <= 2.0


def test_spearman_by_hand():
    # ranks (1, 2, 3, 4) against (1, 3, 2, 4): 1 - 6 * (1 + 1) / (4 * 15) = 0.8; a constant map has no ranking.
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[10.0, 30.0, 20.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
    assert spearman(a, b) == [pytest.approx(0.8, abs=1e-12), None]


def test_cascade_reinitialises_top_down_and_ends_at_the_fresh_model():
    model, fresh = small_convnet(0), small_convnet(1)
    before = copy.deepcopy(model.state_dict())
    assert parameter_layers(model) == ["0", "3", "5"]
    stages = [(name, copy.deepcopy(m.state_dict())) for name, m in cascading_randomization(model, fresh)]
    assert [name for name, _ in stages] == ["5", "3", "0"]
    top = stages[0][1]
    assert torch.equal(top["5.weight"], fresh[5].weight) and torch.equal(top["3.weight"], model[3].weight)
    assert all(torch.equal(stages[-1][1][k], v) for k, v in fresh.state_dict().items())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_sanity_check_model_against_itself_and_an_independent_random_one():
    x = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    classes = torch.tensor([0, 1, 2, 0, 1, 2])
    model = linear_model(0)
    same, _, _ = sanity_check(model, copy.deepcopy(model), x, classes, ["saliency"])
    assert [s["saliency_abs"] for s in same] == [pytest.approx(1.0)]
    assert same[0]["saliency_signed"] == pytest.approx(1.0) and same[0]["randomized"] == ["1"]
    # A linear model's saliency is its weights, so an independently initialised one shares no ranking.
    other, trained, stage_maps = sanity_check(model, linear_model(1), x, classes, ["saliency"])
    assert abs(other[0]["saliency_abs"]) < 0.3 and abs(other[0]["saliency_signed"]) < 0.3
    assert trained["saliency_abs"].shape == (6, 4, 4) and stage_maps[0]["saliency_abs"].shape == (6, 4, 4)


def test_explain_verb_end_to_end_on_a_tiny_digits_run(tmp_path, capsys):
    from shared.cli import main
    from tests.conftest import CONFIGS

    runs = tmp_path / "runs"
    config = str(CONFIGS / "classify" / "lenet5_digits.yaml")
    overrides = [f"runs_dir={runs}", "train.max_steps=3", "tracking.wandb=disabled", "device=cpu"]
    assert main(["train", config, *overrides]) == 0
    (run,) = runs.iterdir()
    before = sorted(p.relative_to(run) for p in run.rglob("*"))

    assert main(["explain", str(run), "--classes", "12", "--device", "cpu"]) == 2
    assert "--classes [12]: digits has classes 0..9" in capsys.readouterr().err
    assert not (run / "analysis").exists()

    argv = ["explain", str(run), "--images", "2", "--classes", "0", "7", "--steps", "3", "--sanity-images", "3"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert "\n  down to c1: saliency_abs " in capsys.readouterr().out
    assert sorted(p.relative_to(run) for p in run.rglob("*") if "analysis" not in p.parts) == before
    (folder,) = (run / "analysis").iterdir()
    assert folder.name.startswith("explain-")
    names = ("maps", "class_models", "sanity_maps", "sanity_correlation")
    assert all((folder / f"explain_{name}.png").stat().st_size > 0 for name in names)
    report = json.loads((folder / "explain.json").read_text())
    assert report["methods"] == ["saliency", "guided_backprop"] and len(report["images"]) == 2
    assert [c["class"] for c in report["class_models"]] == [0, 7]
    stages = report["sanity_check"]["stages"]
    assert [s["randomized"][-1] for s in stages] == ["output", "f6", "c5", "c3", "c1"]
    assert report["sanity_check"]["full_reinit"] == stages[-1] and report["sanity_check"]["images"] == 3
    for key in ("saliency_abs", "saliency_signed", "guided_backprop_abs", "guided_backprop_signed"):
        assert all(s[key] is None or -1 <= s[key] <= 1 for s in stages)
