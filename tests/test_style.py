"""Neural style transfer (generative/style_transfer.py): the losses by hand on a tiny network (no ImageNet weights
can be downloaded here), VGG-19's torchvision names and shapes, and a few L-BFGS steps end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from generative.style_transfer import (
    LAYERS,
    StyleLossConfig,
    StyleObjective,
    content_loss,
    gram,
    load_vgg19_features,
    style_layer_loss,
    total_variation,
)
from shared.cli import main
from shared.errors import ConfigError
from shared.models.vgg import VGG
from tests.conftest import CONFIGS

# A 2-channel 2x2 feature map: channel 0 is [[1, 2], [3, 4]], channel 1 is [[0, 1], [0, -1]].
FEATURES = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]])
# G_00 = 1 + 4 + 9 + 16 = 30, G_01 = 0 + 2 + 0 - 4 = -2, G_11 = 0 + 1 + 0 + 1 = 2.
GRAM = torch.tensor([[[30.0, -2.0], [-2.0, 2.0]]])


def test_gram_matrix_by_hand():
    assert torch.equal(gram(FEATURES), GRAM)


def test_content_style_and_tv_losses_by_hand():
    zero = torch.zeros_like(FEATURES)
    # 1/2 (1 + 4 + 9 + 16 + 0 + 1 + 0 + 1) = 16
    assert content_loss(FEATURES, zero).item() == 16.0
    # (30^2 + 2 * 2^2 + 2^2) / (4 N^2 M^2) with N = 2 filters, M = 4 positions: 912 / 256
    assert style_layer_loss(zero, GRAM).item() == 912 / 256
    assert style_layer_loss(FEATURES, GRAM).item() == 0.0
    # [[1, 2], [3, 4]]: vertical (3-1)^2 + (4-2)^2 = 8, horizontal (2-1)^2 + (4-3)^2 = 2
    assert total_variation(FEATURES[:, :1]).item() == 10.0


def test_the_objective_on_a_tiny_network_by_hand():
    # The tiny network: a 1x1 convolution that copies the first two of three channels, seen as two layers.
    copy_two = nn.Conv2d(3, 2, 1, bias=False)
    with torch.no_grad():
        copy_two.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).view(2, 3, 1, 1))

    def extract(x):
        return {"conv4_2": copy_two(x), "conv1_1": copy_two(x), "conv2_1": 2 * copy_two(x)}

    image = torch.cat([FEATURES, torch.full((1, 1, 2, 2), 7.0)], dim=1)  # (1, 3, 2, 2): the third channel unseen
    cfg = StyleLossConfig(style_layers=["conv1_1", "conv2_1"], content_weight=2.0, style_weight=3.0, tv_weight=0.5)
    objective = StyleObjective(extract, image, image, cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    total, parts = objective(torch.zeros(1, 3, 2, 2))
    # content 16; style: conv1_1 912/256, conv2_1's Gram is 4x, its loss 16x; mean of the two = 17 * 912 / 512
    assert parts["content"].item() == 16.0
    assert parts["style"].item() == pytest.approx(17 * 912 / 512, rel=1e-6)
    assert parts["tv"].item() == 0.0
    assert total.item() == pytest.approx(2 * 16 + 3 * 17 * 912 / 512, rel=1e-6)
    # Content and style match; what is left is TV: channel 0's 10, channel 1's (-1 - 1)^2 + 1^2 + (-1)^2 = 6.
    same, _ = objective(image)
    assert same.item() == 0.5 * (10 + 6 + 0)


# torchvision's vgg19 state_dict, written out by hand: convolutions at features 0, 2 | 5, 7 | 10, 12, 14, 16 |
# 19, 21, 23, 25 | 28, 30, 32, 34 (ReLUs and pools between), then classifier 0, 3, 6.
VGG19_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256)]
VGG19_CONVS += (
    [(i, 256, 256) for i in (12, 14, 16)] + [(19, 256, 512)] + [(i, 512, 512) for i in (21, 23, 25, 28, 30, 32, 34)]
)
VGG19_STATE = {
    **{
        f"features.{i}.{p}": ((o, c, 3, 3) if p == "weight" else (o,))
        for i, c, o in VGG19_CONVS
        for p in ("weight", "bias")
    },
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}


def test_vgg19_has_torchvisions_parameter_names_and_shapes():
    with torch.device("meta"):  # no memory, no init time: only the names and shapes are read
        model = VGG(depth=19)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == VGG19_STATE
    assert list(model.state_dict()) == list(VGG19_STATE)  # the same order too
    # the paper's layer names point at the ReLU after each convolution
    assert [LAYERS[n] for n in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv4_2", "conv5_1")] == [
        1,
        6,
        11,
        20,
        22,
        29,
    ]


def test_a_file_that_is_not_vgg19_is_refused(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "features.0.bias": torch.zeros(7)}, path)
    with pytest.raises(ConfigError) as refused:
        load_vgg19_features(str(path))
    assert str(refused.value) == (
        f"model.weights={str(path)!r} is not torchvision's vgg19 state_dict: 30 missing ['features.2.weight', "
        "'features.2.bias', 'features.5.weight', 'features.5.bias'], 0 unexpected [], 1 of another shape "
        "['features.0.bias (7,) (vgg19: (64,))']"
    )


def write_images(folder):
    from PIL import Image

    ramp = torch.linspace(0, 255, 40).to(torch.uint8)
    content = torch.stack(
        [ramp.expand(32, 40), ramp.flip(0).expand(32, 40), torch.full((32, 40), 90, dtype=torch.uint8)], -1
    )
    checks = ((torch.arange(24)[:, None] // 4 + torch.arange(24) // 4) % 2 * 255).to(torch.uint8)
    Image.fromarray(content.numpy()).save(folder / "content.png")
    Image.fromarray(checks.numpy()).convert("RGB").save(folder / "style.png")
    return str(folder / "content.png"), str(folder / "style.png")


def test_style_transfer_refuses_to_run_without_weights(tmp_path, capsys):
    content, style = write_images(tmp_path)
    runs = tmp_path / "runs"
    argv = ["train", str(CONFIGS / "style" / "gatys.yaml"), f"images.content={content}", f"images.style={style}"]
    assert main([*argv, f"runs_dir={runs}"]) == 2
    assert "model.weights is not set" in capsys.readouterr().err and not runs.exists()


def test_a_few_lbfgs_steps_with_vgg19_weights_from_a_file(tmp_path):
    content, style = write_images(tmp_path)
    generator = torch.Generator().manual_seed(0)
    weights = tmp_path / "vgg19.pth"  # torchvision's layout, with values at the scale of PyTorch's default init
    state = {
        k: (torch.rand(shape, generator=generator) * 2 - 1) / (9 * shape[1]) ** 0.5
        if len(shape) == 4
        else torch.zeros(shape)
        for k, shape in VGG19_STATE.items()
        if k.startswith("features.")
    }
    torch.save(state | {"classifier.6.bias": torch.zeros(1000)}, weights)
    runs = tmp_path / "runs"
    overrides = [f"images.content={content}", f"images.style={style}", f"model.weights={weights}", "images.size=20"]
    overrides += ["optim.steps=3", "tracking.log_every=1", "tracking.wandb=disabled", f"runs_dir={runs}", "device=cpu"]
    assert main(["train", str(CONFIGS / "style" / "gatys.yaml"), *overrides]) == 0
    (run,) = runs.iterdir()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "step" in r]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]  # L-BFGS's line search only accepts descent
    assert (run / "media" / "samples-000000003.png").exists()
    assert (run / "checkpoints" / "step-000000003.pt").exists()
