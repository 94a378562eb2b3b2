"""Backbones of the RL and generative trainers: exact parameter counts, shapes, pixel scaling, heads and init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.models import count_parameters
from shared.models.conv_vae import ConvDecoder, ConvEncoder, subpixel_transposed_conv
from shared.models.dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init_
from shared.models.impala import ImpalaEncoder, ResidualBlock
from shared.models.nature_cnn import NatureEncoder, NatureQNetwork, to_float_pixels


def frames(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def assert_every_parameter_has_a_gradient(*models: nn.Module) -> None:
    for model in models:
        missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing


# Nature DQN


def layer_counts(model: nn.Module) -> dict[str, int]:
    """Trainable parameters of each layer (a module without children) that has any, by its dotted name."""
    layers = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    return {name: count_parameters(m) for name, m in layers if count_parameters(m)}


def test_nature_parameter_counts():
    # Mnih et al. 2015, Methods "Model architecture": conv 32 8x8 s4, conv 64 4x4 s2, conv 64 3x3 s1, fc 512 on the
    # 64 x 7 x 7 maps, then one output per action.
    convs = {"convs.0": 4 * 32 * 8 * 8 + 32, "convs.2": 32 * 64 * 4 * 4 + 64, "convs.4": 64 * 64 * 3 * 3 + 64}
    fc = 64 * 7 * 7 * 512 + 512
    assert layer_counts(NatureEncoder()) == convs | {"fc": fc}
    assert list(convs.values()) + [fc] == [8_224, 32_832, 36_928, 1_606_144]
    assert count_parameters(NatureEncoder()) == 1_684_128
    assert layer_counts(NatureEncoder(in_channels=1))["convs.0"] == 1 * 32 * 8 * 8 + 32
    assert count_parameters(NatureEncoder(in_channels=1)) == 1_677_984
    encoder = {f"encoder.{name}": count for name, count in (convs | {"fc": fc}).items()}
    assert layer_counts(NatureQNetwork(6)) == encoder | {"q": 512 * 6 + 6}
    assert count_parameters(NatureQNetwork(6)) == 1_687_206
    # Wang et al. 2016, dueling: the convolutions, then V and A streams of 512 units each (one 3136 -> 1024 layer),
    # heads of 1 and 6 outputs.
    dueling = encoder | {"encoder.fc": 3136 * 1024 + 1024, "value": 512 * 1 + 1, "advantage": 512 * 6 + 6}
    assert layer_counts(NatureQNetwork(6, dueling=True)) == dueling
    assert count_parameters(NatureQNetwork(6, dueling=True)) == 3_293_863


def test_nature_shapes_and_input_checks():
    encoder = NatureEncoder()
    assert encoder(frames(2, 4, 84, 84)).shape == (2, encoder.out_features) == (2, 512)
    assert NatureQNetwork(6)(frames(3, 4, 84, 84)).shape == (3, 6)
    assert NatureQNetwork(18, in_channels=12, dueling=True)(torch.rand(2, 12, 84, 84)).shape == (2, 18)
    with pytest.raises(ValueError, match="84x84 frames, got \\(80, 80\\)"):
        encoder(frames(1, 4, 80, 80))
    with pytest.raises(TypeError, match="uint8 .* or floating point"):
        encoder(frames(1, 4, 84, 84).long())


@pytest.mark.parametrize("build", [NatureEncoder, lambda: NatureQNetwork(4, dueling=True), ImpalaEncoder])
def test_uint8_frames_are_scaled_by_1_over_255(build):
    model = build()
    x = frames(2, 4, 84, 84)
    assert torch.equal(to_float_pixels(x), x.float() / 255)
    assert to_float_pixels(x).max() <= 1
    assert torch.equal(model(x), model(x.float() / 255))  # the float path uses the input unchanged


def test_dueling_q_is_value_plus_centred_advantage_with_hand_set_weights():
    net = NatureQNetwork(4, dueling=True)
    with torch.no_grad():
        net.value.weight.zero_()
        net.value.bias.fill_(10.0)
        net.advantage.weight.zero_()
        net.advantage.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 6.0]))  # mean 3
    q = net(frames(2, 4, 84, 84))
    assert torch.equal(q, torch.tensor([[8.0, 9.0, 10.0, 13.0]] * 2))  # 10 + A - 3, exactly


def test_dueling_streams_via_hooks_and_their_separate_halves():
    net = NatureQNetwork(5, dueling=True)
    seen = {}
    net.value.register_forward_hook(lambda module, args, out: seen.__setitem__("V", out))
    net.advantage.register_forward_hook(lambda module, args, out: seen.__setitem__("A", out))
    q = net(frames(3, 4, 84, 84))
    v, a = seen["V"], seen["A"]
    assert v.shape == (3, 1) and a.shape == (3, 5)
    assert torch.allclose(q - q.mean(1, keepdim=True), a - a.mean(1, keepdim=True), atol=1e-6)
    assert torch.allclose(q.mean(1, keepdim=True), v, atol=1e-6)  # mean(A - mean A) = 0
    # The value stream reads only the first 512 hidden units, the advantage stream only the last 512.
    fc = net.encoder.fc.weight
    (dv,) = torch.autograd.grad(v.sum(), fc, retain_graph=True)
    (da,) = torch.autograd.grad(a.sum(), fc)
    assert dv[512:].abs().sum() == 0 and dv[:512].abs().sum() > 0
    assert da[:512].abs().sum() == 0 and da[512:].abs().sum() > 0


def test_nature_init_is_the_default_uniform_of_1_over_sqrt_fan_in():
    net = NatureQNetwork(6)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            bound = 1 / math.sqrt(module.weight[0].numel())
            assert 0.99 * bound < module.weight.abs().max() <= bound
            assert module.bias.abs().max() <= bound


@pytest.mark.parametrize("dueling", [False, True])
def test_nature_q_network_backward_reaches_every_parameter(dueling):
    net = NatureQNetwork(6, dueling=dueling)
    net(frames(2, 4, 84, 84)).square().sum().backward()
    assert_every_parameter_has_a_gradient(net)


# IMPALA


def test_impala_parameter_counts():
    # Espeholt et al. 2018, Figure 3 (large): per stack a 3x3 conv and 2 residual blocks of two 3x3 convs, then
    # fc 256 on the 32 x 11 x 11 maps of an 84x84 input.
    def stack(i: int, c_in: int, c_out: int) -> dict[str, int]:
        blocks = {f"stacks.{i}.blocks.{b}.conv{k}": c_out * c_out * 9 + c_out for b in (0, 1) for k in (1, 2)}
        return {f"stacks.{i}.conv": c_in * c_out * 9 + c_out} | blocks

    layers = stack(0, 4, 16) | stack(1, 16, 32) | stack(2, 32, 32) | {"fc": 32 * 11 * 11 * 256 + 256}
    assert layer_counts(ImpalaEncoder()) == layers
    assert [count_parameters(s) for s in ImpalaEncoder().stacks] == [9_872, 41_632, 46_240]
    assert count_parameters(ImpalaEncoder()) == 1_089_232
    procgen = ImpalaEncoder((3, 64, 64))  # 64 -> 32 -> 16 -> 8
    assert layer_counts(procgen) == layers | stack(0, 3, 16) | {"fc": 32 * 8 * 8 * 256 + 256}
    assert count_parameters(procgen) == 622_144


def test_impala_shapes_for_several_input_sizes():
    encoder = ImpalaEncoder()
    sizes = []
    for s in encoder.stacks:
        s.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[1:])))
    assert encoder(frames(1, 4, 84, 84)).shape == (1, encoder.out_features) == (1, 256)
    assert sizes == [(16, 42, 42), (32, 21, 21), (32, 11, 11)]  # max pool: n -> ceil(n / 2)
    odd = ImpalaEncoder((1, 50, 30))  # 50 -> 25 -> 13 -> 7, 30 -> 15 -> 8 -> 4
    assert odd.fc.in_features == 32 * 7 * 4
    assert odd(torch.rand(2, 1, 50, 30)).shape == (2, 256)
    with pytest.raises(ValueError, match="built for \\(4, 84, 84\\) inputs, got \\(3, 84, 84\\)"):
        encoder(frames(1, 3, 84, 84))


def test_impala_residual_block_adds_its_input():
    block = ResidualBlock(8)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    x = torch.randn(2, 8, 5, 5)
    kept = x.clone()
    assert torch.equal(block(x), kept)  # the branch is zero, and the ReLU did not overwrite x in place
    assert torch.equal(x, kept)


def test_impala_init_is_the_reference_codes_truncated_normal():
    encoder = ImpalaEncoder()
    for module in encoder.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            std = 1 / math.sqrt(module.weight[0].numel())
            assert module.weight.abs().max() <= 2 * std
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    # A normal truncated at 2 sigma keeps 0.8796 sigma of spread; the fc has 991,232 weights to measure it.
    assert encoder.fc.weight.std().item() * math.sqrt(3872) == pytest.approx(0.8796, abs=0.005)


def test_impala_backward_reaches_every_parameter():
    encoder = ImpalaEncoder((4, 36, 36))  # small frames: the same layers, a quarter of the work
    encoder(frames(2, 4, 36, 36)).sum().backward()
    assert_every_parameter_has_a_gradient(encoder)


# DCGAN


def test_dcgan_parameter_counts_of_the_standard_64x64_pair():
    # The PyTorch DCGAN tutorial: nz = 100, ngf = ndf = 64, nc = 3, 4x4 kernels, no biases.
    generator, discriminator = DCGANGenerator(), DCGANDiscriminator()
    g_convs = 100 * 512 * 16 + 512 * 256 * 16 + 256 * 128 * 16 + 128 * 64 * 16 + 64 * 3 * 16  # 3,574,784
    g_bn = 2 * (512 + 256 + 128 + 64)  # scale and shift
    assert count_parameters(generator) == g_convs + g_bn == 3_576_704
    d_convs = 3 * 64 * 16 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + 512 * 1 * 16  # 2,763,776
    d_bn = 2 * (128 + 256 + 512)  # none after the first convolution
    assert count_parameters(discriminator) == d_convs + d_bn == 2_765_568


def test_dcgan_parameter_counts_at_32x32_grey():
    # Widths double from base_width at the finest hidden layer: G 4b (4x4), 2b, b; D b (16x16), 2b, 4b.
    g = 100 * 256 * 16 + 256 * 128 * 16 + 128 * 64 * 16 + 64 * 1 * 16 + 2 * (256 + 128 + 64)
    d = 1 * 64 * 16 + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 1 * 16 + 2 * (128 + 256)
    assert count_parameters(DCGANGenerator(channels=1, image_size=32)) == g == 1_066_880
    assert count_parameters(DCGANDiscriminator(channels=1, image_size=32)) == d == 661_248


@pytest.mark.parametrize("image_size", [16, 32, 64])
def test_dcgan_shapes_range_and_layer_pattern(image_size):
    generator = DCGANGenerator(latent_dim=10, channels=3, image_size=image_size, base_width=8)
    discriminator = DCGANDiscriminator(channels=3, image_size=image_size, base_width=8)
    z = torch.randn(4, 10)
    images = generator(z)
    assert images.shape == (4, 3, image_size, image_size)
    with torch.no_grad():
        generator.net[-2].weight.mul_(1000)  # pre-activations far beyond +-1: the tanh saturates but bounds them
    saturated = generator(z)
    assert saturated.abs().max() <= 1 and saturated.abs().max() > 0.99
    assert discriminator(images).shape == (4,)
    generator.eval()
    assert torch.equal(generator(z), generator(z[:, :, None, None]))  # (B, latent) and (B, latent, 1, 1)
    stages = int(math.log2(image_size)) - 2
    g_layers, d_layers = list(generator.net), list(discriminator.net)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g_layers) == stages  # all but the output
    assert [type(m) for m in g_layers[-2:]] == [nn.ConvTranspose2d, nn.Tanh]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d_layers) == stages - 1  # all but the input
    assert [type(m) for m in d_layers[:2]] == [nn.Conv2d, nn.LeakyReLU] and d_layers[1].negative_slope == 0.2
    assert not any(isinstance(m, nn.Sigmoid) for m in discriminator.modules())  # logits, for BCE-with-logits


def test_dcgan_image_size_and_input_checks():
    for bad in (28, 48, 8):
        with pytest.raises(ValueError, match=f"power of two >= 16 .* got {bad}; .*MNIST 28x28: pad by 2 to 32x32"):
            DCGANGenerator(image_size=bad)
        with pytest.raises(ValueError, match="power of two >= 16"):
            DCGANDiscriminator(image_size=bad)
    with pytest.raises(ValueError, match="z must be \\(B, 100\\) or \\(B, 100, 1, 1\\), got \\(2, 99\\)"):
        DCGANGenerator()(torch.randn(2, 99))
    with pytest.raises(ValueError, match="reads 32x32 images, got \\(28, 28\\)"):
        DCGANDiscriminator(channels=1, image_size=32)(torch.randn(2, 1, 28, 28))


def test_dcgan_init_follows_the_paper():
    torch.manual_seed(0)
    generator = DCGANGenerator()
    big = generator.net[3].weight  # 512 x 256 x 4 x 4
    assert big.mean().item() == pytest.approx(0, abs=1e-4) and big.std().item() == pytest.approx(0.02, abs=1e-4)
    for model in (generator, DCGANDiscriminator()):
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                assert m.bias is None
            if isinstance(m, nn.BatchNorm2d):
                assert torch.equal(m.bias, torch.zeros_like(m.bias))
                assert m.weight.mean().item() == pytest.approx(1, abs=0.01) and m.weight.std() < 0.03
    # dcgan_init_ works on any module: it resets a conv's weights and a BN's scale and shift.
    other = nn.Sequential(nn.Conv2d(3, 256, 4), nn.BatchNorm2d(256))
    dcgan_init_(other)
    assert other[0].weight.std().item() == pytest.approx(0.02, abs=1e-3) and other[1].bias.abs().sum() == 0


def test_dcgan_backward_reaches_every_parameter():
    generator = DCGANGenerator(latent_dim=16, channels=1, image_size=32, base_width=8)
    discriminator = DCGANDiscriminator(channels=1, image_size=32, base_width=8)
    logits = discriminator(generator(torch.randn(3, 16)))
    F.binary_cross_entropy_with_logits(logits, torch.ones(3)).backward()
    assert_every_parameter_has_a_gradient(generator, discriminator)


# Convolutional VAE


@pytest.mark.parametrize("channels, image_size, side", [(1, 28, 7), (3, 32, 8)])
def test_conv_vae_shapes_and_round_trip(channels, image_size, side):
    encoder = ConvEncoder(in_channels=channels, image_size=image_size, latent_dim=16)
    decoder = ConvDecoder(latent_dim=16, out_channels=channels, image_size=image_size)
    x = torch.rand(3, channels, image_size, image_size)
    mu, logvar = encoder(x)
    assert mu.shape == logvar.shape == (3, 16)
    assert encoder.fc.in_features == 64 * side * side and decoder.side == side
    assert decoder(mu).shape == x.shape


def test_conv_vae_parameter_counts():
    # 1x28x28, latent 32, width 32: conv 4x4 1 -> 32 (14x14), conv 4x4 32 -> 64 (7x7), 64 * 7 * 7 = 3136 features.
    encoder, decoder = ConvEncoder(), ConvDecoder()
    layers = {name: count_parameters(m) for name, m in encoder.named_children()}
    assert layers == {"conv1": 1 * 32 * 16 + 32, "conv2": 32 * 64 * 16 + 64, "fc": 3136 * 2 * 32 + 2 * 32}
    assert count_parameters(encoder) == 544 + 32_832 + 200_768 == 234_144
    layers = {name: count_parameters(m) for name, m in decoder.named_children()}
    assert layers == {"fc": 32 * 3136 + 3136, "deconv1": 64 * 32 * 16 + 32, "deconv2": 32 * 1 * 16 + 1}
    assert count_parameters(decoder) == 103_488 + 32_800 + 513 == 136_801
    # 3x32x32: 3 input channels and 64 * 8 * 8 = 4096 features.
    assert count_parameters(ConvEncoder(3, 32)) == (3 * 32 * 16 + 32) + 32_832 + (4096 * 64 + 64) == 296_608
    decoder = ConvDecoder(out_channels=3, image_size=32)
    assert count_parameters(decoder) == (32 * 4096 + 4096) + 32_800 + (32 * 3 * 16 + 3) == 169_507


def test_conv_vae_does_not_mix_samples_and_checks_the_size():
    encoder, decoder = ConvEncoder().eval(), ConvDecoder().eval()
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = encoder(x)
    mu0, logvar0 = encoder(x[:1])
    assert torch.allclose(mu0, mu[:1], atol=1e-6) and torch.allclose(logvar0, logvar[:1], atol=1e-6)
    assert torch.allclose(decoder(mu[:1]), decoder(mu)[:1], atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4, got 30"):
        ConvEncoder(image_size=30)


@pytest.mark.parametrize("cin, cout, side", [(32, 1, 14), (6, 3, 5)])
def test_subpixel_transposed_conv_is_the_transposed_conv_values_and_gradients(cin, cout, side):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    x = torch.randn(2, cin, side, side, requires_grad=True)
    expected, got = layer(x), subpixel_transposed_conv(layer, x)
    assert got.shape == expected.shape == (2, cout, 2 * side, 2 * side)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(expected.square().sum(), (x, layer.weight, layer.bias))
    for g, e in zip(torch.autograd.grad(got.square().sum(), (x, layer.weight, layer.bias)), grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="kernel 4, stride 2, padding 1"):
        subpixel_transposed_conv(nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1), x)


def test_conv_vae_backward_reaches_every_parameter():
    encoder, decoder = ConvEncoder(), ConvDecoder()
    x = (torch.rand(4, 1, 28, 28) > 0.5).float()  # binarized, for a Bernoulli likelihood
    mu, logvar = encoder(x)
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    reconstruction = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="sum")
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum()
    (reconstruction + kl).backward()
    assert_every_parameter_has_a_gradient(encoder, decoder)
