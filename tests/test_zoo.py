"""The image-classification zoo: exact parameter counts (each with its source), shapes at the native input
size, heads, the papers' map sizes and inits, option-A shortcuts, GoogLeNet's auxiliary classifiers.

Each model is built once for its count, shape and head (the VGGs are 140M parameters each) and freed when
its test ends; the other tests build only small models or parts.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from shared.models import MODELS, build_model, count_parameters
from shared.models.alexnet import AlexNet, ZFNet
from shared.models.googlenet import GoogLeNet
from shared.models.resnet import BasicBlock, CifarResNet, ZeroPadShortcut


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """On a shared 2-core machine, two intra-op threads wait on each other behind other processes: one is
    10-100x faster here (resnet110's forward: 0.02 s against 2.5 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conv(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
    return c_out * (c_in // groups) * k * k + c_out  # weights + biases


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# Hand counts from the papers' layer tables, for C = 1000.
ALEXNET = (  # Krizhevsky et al. 2012, Section 3.5: conv2, conv4, conv5 read their own tower's half
    conv(3, 96, 11)
    + conv(96, 256, 5, groups=2)
    + conv(256, 384, 3)
    + conv(384, 384, 3, groups=2)
    + conv(384, 256, 3, groups=2)
    + linear(256 * 6 * 6, 4096)
    + linear(4096, 4096)
    + linear(4096, 1000)
)
ZFNET = (  # Zeiler & Fergus 2013, Figure 3: all layers dense
    conv(3, 96, 7)
    + conv(96, 256, 5)
    + conv(256, 384, 3)
    + conv(384, 384, 3)
    + conv(384, 256, 3)
    + linear(256 * 6 * 6, 4096)
    + linear(4096, 4096)
    + linear(4096, 1000)
)
# Szegedy et al. 2014, Table 1: input maps, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
TABLE_1 = {
    "3a": (192, 64, 96, 128, 16, 32, 32),  # -> 256
    "3b": (256, 128, 128, 192, 32, 96, 64),  # -> 480
    "4a": (480, 192, 96, 208, 16, 48, 64),  # -> 512
    "4b": (512, 160, 112, 224, 24, 64, 64),  # -> 512
    "4c": (512, 128, 128, 256, 24, 64, 64),  # -> 512
    "4d": (512, 112, 144, 288, 32, 64, 64),  # -> 528
    "4e": (528, 256, 160, 320, 32, 128, 128),  # -> 832
    "5a": (832, 256, 160, 320, 32, 128, 128),  # -> 832
    "5b": (832, 384, 192, 384, 48, 128, 128),  # -> 1024
}


def inception(c: int, c1: int, r3: int, c3: int, r5: int, c5: int, pp: int) -> int:
    return conv(c, c1, 1) + conv(c, r3, 1) + conv(r3, c3, 3) + conv(c, r5, 1) + conv(r5, c5, 5) + conv(c, pp, 1)


INCEPTIONS = sum(inception(*row) for row in TABLE_1.values())
GOOGLENET = conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3) + INCEPTIONS + linear(1024, 1000)
# Section 5: avg pool 5x5/3 (4x4 maps), conv 1x1 128, fc 1024, fc 1000; on 4a (512 maps) and 4d (528).
AUX_4A = conv(512, 128, 1) + linear(128 * 4 * 4, 1024) + linear(1024, 1000)
AUX_4D = conv(528, 128, 1) + linear(128 * 4 * 4, 1024) + linear(1024, 1000)


def cifar_resnet(n: int) -> dict[str, int]:
    """He et al. 2016, Section 4.2, C = 10: conv 3x3 16 + BN, stages of n blocks (two 3x3 convs + BNs each,
    option-A shortcuts free), fc 64 -> 10. Convolutions have no bias; a BN has 2 per channel."""
    return {
        "conv1": 16 * 3 * 9,  # 432
        "bn1": 2 * 16,
        "layer1": n * 2 * (16 * 16 * 9 + 2 * 16),  # n * 4,672
        "layer2": (32 * 16 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + (n - 1) * 2 * (32 * 32 * 9 + 2 * 32),
        "layer3": (64 * 32 * 9 + 2 * 64) + (64 * 64 * 9 + 2 * 64) + (n - 1) * 2 * (64 * 64 * 9 + 2 * 64),
        "fc": linear(64, 10),
    }


def layer_counts(module: nn.Module) -> dict[str, int]:
    """Trainable parameters of each child module that has any."""
    return {name: count_parameters(child) for name, child in module.named_children() if count_parameters(child)}


def on_meta(build, **kwargs) -> nn.Module:
    """The model's layers without memory for their weights: AlexNet's 61M parameters cost nothing here."""
    with torch.device("meta"):
        return build(**kwargs)


def test_hand_counts():
    """The papers' layer tables, counted by hand above, against each model's own layers, and the totals that
    EXPECTED below holds as literals."""
    alexnet, zfnet = on_meta(AlexNet), on_meta(ZFNet)
    assert layer_counts(alexnet.features) == {
        "conv1": conv(3, 96, 11),
        "conv2": conv(96, 256, 5, groups=2),
        "conv3": conv(256, 384, 3),
        "conv4": conv(384, 384, 3, groups=2),
        "conv5": conv(384, 256, 3, groups=2),
    }
    assert layer_counts(zfnet.features) == {
        "conv1": conv(3, 96, 7),
        "conv2": conv(96, 256, 5),
        "conv3": conv(256, 384, 3),
        "conv4": conv(384, 384, 3),
        "conv5": conv(384, 256, 3),
    }
    classifier = {"fc6": linear(256 * 6 * 6, 4096), "fc7": linear(4096, 4096), "fc8": linear(4096, 1000)}
    assert layer_counts(alexnet.classifier) == layer_counts(zfnet.classifier) == classifier
    assert count_parameters(alexnet) == ALEXNET == 60_965_224  # the paper's "60 million parameters"
    assert count_parameters(zfnet) == ZFNET == 62_357_608

    googlenet = on_meta(GoogLeNet, num_classes=1000, aux_logits=True)
    assert layer_counts(googlenet) == (
        {"conv1": conv(3, 64, 7), "conv2": conv(64, 64, 1), "conv3": conv(64, 192, 3)}
        | {f"inception{name}": inception(*row) for name, row in TABLE_1.items()}
        | {"aux1": AUX_4A, "aux2": AUX_4D, "fc": linear(1024, 1000)}
    )
    assert (INCEPTIONS, GOOGLENET, AUX_4A, AUX_4D) == (5_849_136, 6_998_552, 3_188_840, 3_190_888)

    for n in (3, 5, 7, 9, 18):
        model = on_meta(CifarResNet, depth=6 * n + 2)
        assert layer_counts(model) == cifar_resnet(n), n
        assert count_parameters(model) == sum(cifar_resnet(n).values()) == EXPECTED[f"resnet{6 * n + 2}"][0]


CIFAR = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
# name -> (trainable parameters for C = 1000, or C = 10 for the CIFAR ResNets; native input side)
EXPECTED = {
    "alexnet": (60_965_224, 227),  # ALEXNET above
    "zfnet": (62_357_608, 224),  # ZFNET above
    # torchvision's VGG (its model docs' num_params); the _bn ones add 2 per conv channel.
    "vgg11": (132_863_336, 224),
    "vgg13": (133_047_848, 224),
    "vgg16": (138_357_544, 224),
    "vgg19": (143_667_240, 224),
    "vgg11_bn": (132_868_840, 224),  # + 2 * 2,752
    "vgg13_bn": (133_053_736, 224),  # + 2 * 2,944
    "vgg16_bn": (138_365_992, 224),  # + 2 * 4,224
    "vgg19_bn": (143_678_248, 224),  # + 2 * 5,504
    "googlenet": (6_998_552, 224),  # GOOGLENET above (no auxiliary classifiers by default)
    # torchvision's ResNets (its model docs' num_params).
    "resnet18": (11_689_512, 224),
    "resnet34": (21_797_672, 224),
    "resnet50": (25_557_032, 224),
    "resnet101": (44_549_160, 224),
    "resnet152": (60_192_808, 224),
    # cifar_resnet(n) above, depth 6n + 2; the paper's Table 6 rounds them to 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
    "resnet20": (269_722, 32),
    "resnet32": (464_154, 32),
    "resnet44": (658_586, 32),
    "resnet56": (853_018, 32),
    "resnet110": (1_727_962, 32),
    # torchvision's SqueezeNets (its model docs' num_params).
    "squeezenet1_0": (1_248_424, 224),
    "squeezenet1_1": (1_235_496, 224),
}


def test_every_zoo_name_is_registered():
    assert set(MODELS) == set(EXPECTED) | set(MLPS) | {"lenet5", "lenet5_caffe"}  # both LeNets: test_compress.py


@pytest.mark.parametrize("name", list(EXPECTED))
def test_count_shape_and_head(name):
    parameters, side = EXPECTED[name]
    num_classes = 10 if name in CIFAR else 1000
    model = build_model(name, num_classes=num_classes).eval()
    assert count_parameters(model) == parameters
    assert model.input_size == side
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, num_classes)
    head = model.get_submodule(model.head)
    assert isinstance(head, (nn.Linear, nn.Conv2d))
    assert (head.out_features if isinstance(head, nn.Linear) else head.out_channels) == num_classes


@pytest.mark.parametrize("name, batch, side", [("resnet20", 4, 32), ("squeezenet1_1", 2, 224)])
def test_forward_backward_reaches_every_parameter(name, batch, side):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=1)  # also: other class and channel counts go through
    logits = model(torch.randn(batch, 1, side, side))
    assert logits.shape == (batch, 7)
    nn.functional.cross_entropy(logits, torch.arange(batch) % 7).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)  # map 0 holds 0..15, map 1 16..31
    out = ZeroPadShortcut(extra_channels=2, stride=2)(x)
    zeros = [[0.0, 0.0], [0.0, 0.0]]
    assert torch.equal(out, torch.tensor([[[[0.0, 2.0], [8.0, 10.0]], [[16.0, 18.0], [24.0, 26.0]], zeros, zeros]]))

    block = BasicBlock(16, 32, stride=2, shortcut="A")
    assert isinstance(block.downsample, ZeroPadShortcut)
    assert count_parameters(block) == (32 * 16 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32)  # the two convs and BNs only
    # With the residual branch silenced (bn2 scale 0, bias 0) a block passes its shortcut through the ReLU.
    nn.init.zeros_(block.bn2.weight)
    x = torch.rand(2, 16, 8, 8)
    expected = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1)
    assert torch.equal(block.eval()(x), expected)

    model = CifarResNet(depth=20)
    shortcuts = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2  # the first blocks of stages 2 and 3
    assert all(count_parameters(m) == 0 for m in shortcuts)


def test_googlenet_aux_logits_and_table_1_sizes():
    torch.manual_seed(0)
    model = GoogLeNet(num_classes=1000, aux_logits=True)
    assert count_parameters(model) == GOOGLENET + AUX_4A + AUX_4D == 13_378_280
    sizes = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        sizes[names[module]] = tuple(output.shape[1:])

    names = {module: name for name, module in model.named_children() if name.startswith("inception")}
    for module in names:
        module.register_forward_hook(record)

    logits, aux1, aux2 = model.train()(torch.randn(2, 3, 224, 224))
    assert logits.shape == aux1.shape == aux2.shape == (2, 1000)
    assert sizes == {
        "inception3a": (256, 28, 28),
        "inception3b": (480, 28, 28),
        "inception4a": (512, 14, 14),
        "inception4b": (512, 14, 14),
        "inception4c": (512, 14, 14),
        "inception4d": (528, 14, 14),
        "inception4e": (832, 14, 14),
        "inception5a": (832, 7, 7),
        "inception5b": (1024, 7, 7),
    }
    (logits.sum() + 0.3 * (aux1.sum() + aux2.sum())).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 1000)  # the aux heads are for training only


@pytest.mark.parametrize(
    "features, side, sizes",
    [
        # Krizhevsky et al. 2012, Figure 2 (with the 227 input its arithmetic needs).
        (AlexNet.make_features(3), 227, {"conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13, "conv5": 13, "pool5": 6}),
        # Zeiler & Fergus 2013, Figure 3.
        (ZFNet.make_features(3), 224, {"conv1": 110, "pool1": 55, "conv2": 26, "pool2": 13, "conv5": 13, "pool5": 6}),
    ],
    ids=["alexnet", "zfnet"],
)
def test_map_sizes_are_the_papers(features, side, sizes):
    x, seen = torch.randn(1, 3, side, side), {}
    with torch.no_grad():
        for name, layer in features.named_children():
            x = layer(x)
            seen[name] = x.shape[-1]
    assert {name: seen[name] for name in sizes} == sizes


def test_alexnet_init_and_normalisation_are_the_papers():
    torch.manual_seed(0)
    model = AlexNet()
    f, c = model.features, model.classifier
    # Section 5: biases 1 in conv2, conv4, conv5 and the hidden fully connected layers, 0 in the others.
    for layer in (f.conv2, f.conv4, f.conv5, c.fc6, c.fc7):
        assert torch.equal(layer.bias, torch.ones_like(layer.bias))
    for layer in (f.conv1, f.conv3, c.fc8):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert abs(c.fc6.weight.std().item() - 0.01) < 1e-4  # N(0, 0.01), 37.7M draws

    # Section 3.3: b_i = a_i / (2 + 1e-4 * sum of a_j^2 over j within 2 maps of i, inside 0..N-1)^0.75.
    a = torch.randn(1, 96, 3, 3) * 30  # large enough for the normalisation to matter
    window_sums = [(a[:, max(0, i - 2) : min(95, i + 2) + 1] ** 2).sum(1) for i in range(96)]  # 96 x (1, 3, 3)
    expected = torch.stack([a[:, i] / (2 + 1e-4 * window_sums[i]) ** 0.75 for i in range(96)], dim=1)
    torch.testing.assert_close(f.norm1(a), expected, rtol=1e-5, atol=1e-6)


# The MLPs on MNIST (C = 10, 1 x 28 x 28 inputs): name -> (hidden sizes, trainable parameters).
MLPS = {
    "mlp_1200_1200": ((1200, 1200), linear(784, 1200) + linear(1200, 1200) + linear(1200, 10)),  # 2,395,210
    "mlp_800_800": ((800, 800), linear(784, 800) + linear(800, 800) + linear(800, 10)),  # 1,276,810
    # Han et al. 2015, Table 1: LeNet-300-100 has 267K weights.
    "lenet_300_100": ((300, 100), linear(784, 300) + linear(300, 100) + linear(100, 10)),  # 266,610
}


@pytest.mark.parametrize("name", list(MLPS))
def test_mlp_count_shape_head_and_dropout(name):
    hidden, parameters = MLPS[name]
    model = build_model(name, num_classes=10, in_channels=1)
    assert count_parameters(model) == parameters
    assert [layer.out_features for layer in model.hidden] == list(hidden)
    assert model.input_size == 28 and model.get_submodule(model.head) is model.output
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))  # no dropout in evaluation
        train_differs = not torch.equal(model.train()(x), model.eval()(x))
    assert train_differs == (name == "mlp_1200_1200")  # only the teacher has dropout
    with pytest.raises(ValueError, match="data.pad=10"):
        model(torch.randn(2, 1, 8, 8))


def test_mlp_counts_are_the_papers():
    assert {name: parameters for name, (_, parameters) in MLPS.items()} == {
        "mlp_1200_1200": 2_395_210,
        "mlp_800_800": 1_276_810,
        "lenet_300_100": 266_610,
    }
    teacher = build_model("mlp_1200_1200", num_classes=10, in_channels=1)
    assert (teacher.input_dropout, teacher.dropout) == (0.2, 0.5)  # Srivastava et al. 2014, MNIST
