"""Classification models by name, so that a config can name any of them: `build_model("resnet20", num_classes=10)`.

Every registered class takes `num_classes` and `in_channels` keyword arguments and names its final
classifier layer in the class attribute `head` (a dotted module path such as "fc" or "classifier.6"),
which is what transfer learning replaces. Backbones for the RL and generative trainers (Nature CNN,
IMPALA encoder, DCGAN stacks, VAE encoder/decoder) live in their own modules and are imported directly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn as nn

from shared.models.alexnet import AlexNet, ZFNet
from shared.models.googlenet import GoogLeNet
from shared.models.lenet import LeNet5, LeNet5Caffe
from shared.models.mlp import MLPClassifier
from shared.models.resnet import IMAGENET_DEPTHS, CifarResNet, ResNet
from shared.models.squeezenet import SqueezeNet
from shared.models.vgg import CONFIGS as VGG_CONFIGS
from shared.models.vgg import VGG

# One class serves several depths; the partials fix the depth (their `.func` is the class, with `head`
# and `input_size`).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "lenet5_caffe": LeNet5Caffe,
    "alexnet": AlexNet,
    "zfnet": ZFNet,
    **{f"vgg{depth}": partial(VGG, depth=depth) for depth in VGG_CONFIGS},
    **{f"vgg{depth}_bn": partial(VGG, depth=depth, batch_norm=True) for depth in VGG_CONFIGS},
    "googlenet": GoogLeNet,
    **{f"resnet{depth}": partial(ResNet, depth=depth) for depth in IMAGENET_DEPTHS},
    **{f"resnet{depth}": partial(CifarResNet, depth=depth) for depth in (20, 32, 44, 56, 110)},
    "squeezenet1_0": partial(SqueezeNet, version="1_0"),
    "squeezenet1_1": partial(SqueezeNet, version="1_1"),
    "mlp_1200_1200": partial(MLPClassifier, hidden=(1200, 1200), dropout=0.5, input_dropout=0.2),
    "mlp_800_800": partial(MLPClassifier, hidden=(800, 800)),
    "lenet_300_100": partial(MLPClassifier, hidden=(300, 100)),
}


def build_model(name: str, num_classes: int, in_channels: int = 3, **options) -> nn.Module:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, **options)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
