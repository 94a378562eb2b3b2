"""shared/adversarial.py (FGSM, PGD), adversarial training in the classify trainer, and `pixlab attack`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import CONFIGS
from test_analysis import make_run

from shared.adversarial import evaluate_attack, fgsm, pgd, pixel_classifier
from shared.analysis import load_classifier
from shared.classify import AdversarialTrainingConfig, adversarial_inputs, adversarial_objective, evaluate_split
from shared.cli import main
from shared.config import load_config
from shared.data import ImageData, Split
from shared.errors import ConfigError
from shared.tracking import read_summary
from shared.train.accel import AccelConfig, Accelerator

DIGITS = str(CONFIGS / "classify" / "lenet5_digits.yaml")
# A linear classifier of 2x2 one-channel images into 2 classes. For cross-entropy, grad_x J = W^T (p - onehot(y)),
# which for two classes is p_1 (W_1 - W_0) when y = 0 and p_0 (W_0 - W_1) when y = 1: its sign is that of
# +-(W_1 - W_0) = +-[-2, 5, -0.5, 0], whatever p is. The last pixel has no weight, so no gradient: FGSM leaves it.
W = torch.tensor([[1.0, -2.0, 0.5, 0.0], [-1.0, 3.0, 0.0, 0.0]])
B = torch.tensor([0.1, -0.2])


def linear(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.flatten(1) @ W.T + B


def test_fgsm_steps_epsilon_along_the_sign_of_the_hand_computed_gradient_and_clips():
    pixels = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]]).view(2, 1, 2, 2)
    attacked = fgsm(linear, pixels, torch.tensor([0, 1]), epsilon=0.25)
    expected = torch.tensor([[0.0, 1.0, 0.25, 0.5], [0.75, 0.25, 0.75, 0.5]]).view(2, 1, 2, 2)  # 0.1 - 0.25 -> 0
    assert torch.equal(attacked, expected)


def test_pixel_classifier_is_the_model_on_the_prepared_batch():
    data = tiny_data(pad=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    images = data.test.images
    assert torch.equal(pixel_classifier(model, data)(images.float() / 255), model(data.prepare(images)))


def test_pgd_stays_in_the_epsilon_ball_and_the_pixel_range_and_raises_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))
    pixels = torch.rand(32, 1, 4, 4)
    pixels[:, :, 0] = 0.0  # pixels at the ends of the range: clipping, not the ball, binds there
    pixels[:, :, 1] = 1.0
    labels = torch.randint(0, 10, (32,))
    attacked = pgd(model, pixels, labels, epsilon=0.1, steps=10, step_size=0.03, generator=generator(0))
    assert (attacked - pixels).abs().max() <= 0.1 + 1e-6 and attacked.min() >= 0 and attacked.max() <= 1
    assert (attacked - pixels).abs().max() >= 0.1 - 1e-6  # it reached the ball's surface
    assert F.cross_entropy(model(attacked), labels) > F.cross_entropy(model(pixels), labels) + 0.05


def test_pgd_random_start_depends_on_the_generator_seed_alone():
    pixels, labels = torch.full((4, 1, 2, 2), 0.5), torch.tensor([0, 1, 0, 1])
    first, again, other = (pgd(linear, pixels, labels, 0.2, 1, 0.01, generator(s)) for s in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_attacks_leave_batch_norm_statistics_modes_and_weight_gradients_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.Dropout(0.5), nn.Flatten(), nn.Linear(12, 2))
    model.train()
    model[4].eval()  # a module in a mode of its own (a frozen part) gets it back
    before = [b.clone() for b in model.buffers()]
    data, accel = tiny_data(pad=0), Accelerator(AccelConfig(), torch.device("cpu"))
    cfg = AdversarialTrainingConfig(method="pgd", epsilon=0.1, steps=3, step_size=0.05, mix=0.5)
    images, labels = data.train.images, data.train.labels
    inputs = adversarial_inputs(cfg, model, data, accel, images, labels, generator(0))
    again = adversarial_inputs(cfg, model, data, accel, images, labels, generator(0))
    evaluate_attack(cfg, model, data, data.test, batch_size=2, generator=generator(0))
    assert inputs.shape == (8, 1, 2, 2) and torch.equal(inputs, again)  # clean then attacked; no dropout draw
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model] == [True, True, True, True, False]


def test_adversarial_training_loss_has_the_hand_computed_gradient_of_its_mix():
    data = tiny_data(pad=0, mean=0.0, std=1.0)  # prepare_pixels is the identity: the model sees pixels
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(W)
        model[1].bias.copy_(B)
    images, labels = data.train.images, data.train.labels
    accel = Accelerator(AccelConfig(), torch.device("cpu"))
    # By hand: x_adv from the sign of +-(W_1 - W_0) (see `linear`), then dJ/dW = sum_i (p_i - onehot(y_i)) x_i^T.
    clean = images.flatten(1).float() / 255
    direction = torch.tensor([-1.0, 1.0, -1.0, 0.0]) * torch.where(labels == 0, 1.0, -1.0)[:, None]
    attacked = (clean + 0.25 * direction).clamp(0, 1)
    gradients = {}
    for mix in (0.0, 0.5, 1.0):
        cfg = AdversarialTrainingConfig(method="fgsm", epsilon=0.25, mix=mix)
        inputs = adversarial_inputs(cfg, model, data, accel, images, labels, generator(0))
        loss = adversarial_objective(model(inputs), labels, cfg)
        gradients[mix] = torch.autograd.grad(loss, list(model.parameters()))
        expected_w, expected_b = torch.zeros(2, 4), torch.zeros(2)
        for weight, x in ((mix, clean), (1 - mix, attacked)):
            residual = (x @ W.T + B).softmax(1) - F.one_hot(labels, 2)
            expected_w += weight * residual.T @ x
            expected_b += weight * residual.sum(0)
        assert torch.allclose(gradients[mix][0], expected_w, atol=1e-6), mix
        assert torch.allclose(gradients[mix][1], expected_b, atol=1e-6), mix
    assert (gradients[0.0][0] - gradients[1.0][0]).abs().max() > 0.1


def test_adversarial_and_attack_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="train.adversarial.mix=1.5: must be in"):
        load_config(DIGITS, ["train.adversarial.method=fgsm", "train.adversarial.mix=1.5"])
    with pytest.raises(ConfigError, match="attack.epsilon=2.0: must be in"):
        load_config(DIGITS, ["attack.method=pgd", "attack.epsilon=2"])
    with pytest.raises(ConfigError, match="attack.method='cw' is not a valid choice"):
        load_config(DIGITS, ["attack.method=cw"])


def test_pixlab_eval_and_pixlab_attack_on_a_run(tmp_path, capsys):
    run, _, _ = make_run(tmp_path)  # LeNet-5 on digits, untrained weights: the verbs do not care
    capsys.readouterr()
    assert main(["eval", str(run), "attack.method=fgsm", "attack.epsilon=0.25"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert 0 <= evaluated["test/attack/error"] <= 1 and 0 < evaluated["test/attack/confidence"] <= 1

    argv = ["attack", str(run), "--method", "pgd", "--epsilons", "0.3", "0", "--steps", "2", "--step-size", "0.2"]
    assert main([*argv, "--limit", "4"]) == 0
    table = capsys.readouterr().out
    (folder,) = (run / "analysis").iterdir()
    report = json.loads((folder / "attack.json").read_text())
    assert report["method"] == "pgd" and report["steps"] == 2 and report["images"] == 4
    assert [r["epsilon"] for r in report["results"]] == [0.0, 0.3]
    _, model, data = load_classifier(run)
    clean = evaluate_split(model, Split(data.test.images[:4], data.test.labels[:4]), data, 4)
    assert report["results"][0]["error"] == clean["error"]  # epsilon 0 attacks nothing
    assert report["results"][1]["error"] >= clean["error"]
    assert "| 0 | " in table and "| 0.3 | " in table
    assert {p.name for p in folder.iterdir()} >= {"attack.json", "attack_error.png", "attack_examples.png"}
    assert main([*argv[:2], "--limit", "0"]) == 2
    assert main([*argv[:2], "--epsilons", "1.5"]) == 2
    assert len(list((run / "analysis").iterdir())) == 1


@pytest.mark.slow
def test_an_adversarially_trained_run_reports_the_attack_and_eval_agrees(tmp_path, capsys):
    runs = tmp_path / "runs"
    common = [f"runs_dir={runs}", "tracking.wandb=disabled", "train.max_steps=3", "train.batch_size=32"]
    adversarial = ["train.adversarial.method=pgd", "train.adversarial.steps=2", "train.adversarial.step_size=0.1"]
    assert main(["train", DIGITS, *common, *adversarial, "attack.method=fgsm", "attack.epsilon=0.25"]) == 0
    (run,) = runs.iterdir()
    summary = read_summary(run)
    assert 0 <= summary["test/attack/error"] <= 1 and 0 < summary["test/attack/confidence"] <= 1
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["test/attack/error"] == summary["test/attack/error"]


def tiny_data(pad: int, mean: float = 0.4, std: float = 0.3) -> ImageData:
    images = torch.tensor(
        [[10, 200, 128, 0], [255, 30, 128, 60], [128, 128, 128, 128], [0, 255, 0, 255]], dtype=torch.uint8
    )
    split = Split(images.view(4, 1, 2, 2), torch.tensor([0, 1, 1, 0]))
    return ImageData("tiny", split, split, num_classes=2, mean=(mean,), std=(std,), pad=pad)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
