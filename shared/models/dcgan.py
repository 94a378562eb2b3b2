"""DCGAN (Radford, Metz, Chintala 2015, "Unsupervised representation learning with deep convolutional
generative adversarial networks").

Generator, for image_size 64 and base width b (the paper's Figure 1 has b = 128; the PyTorch DCGAN
tutorial, whose counts we check, b = 64):

    z (B, latent_dim) or (B, latent_dim, 1, 1)
      -> conv-transpose 4x4 (a projection):        (8b, 4, 4)    -> BN -> ReLU
      -> conv-transpose 4x4 stride 2 padding 1:     (4b, 8, 8)    -> BN -> ReLU
      -> ...                                        (2b, 16, 16), (b, 32, 32)
      -> conv-transpose 4x4 stride 2 padding 1:     (channels, 64, 64) -> tanh, in [-1, 1]

Discriminator, its mirror image:

    x (B, channels, 64, 64) -> conv 4x4 stride 2 padding 1: (b, 32, 32) -> LeakyReLU 0.2
      -> conv 4x4 stride 2 padding 1 -> BN -> LeakyReLU 0.2: (2b, 16, 16), (4b, 8, 8), (8b, 4, 4)
      -> conv 4x4 (no padding): (1, 1, 1) -> one logit (B,)

Kept from the paper: no pooling (strided convolutions down, fractionally-strided ones up), no fully
connected hidden layers, batch norm in every layer but the generator's output and the discriminator's
input, ReLU with a tanh output in the generator, LeakyReLU of slope 0.2 in the discriminator, and the init:
N(0, 0.02) for every convolution weight (the paper's "all weights"), with the BN scales drawn from
N(1, 0.02) and the BN shifts zero as in the authors' dcgan.torch code (`dcgan_init_`). The discriminator's
last 4x4 convolution over the 4x4 maps is the paper's "flattened and fed into a single sigmoid output"
without the sigmoid: it returns a logit, and the trainer uses BCE-with-logits, which is the same loss
computed stably.

Our documented choices:
- No convolution biases, as in the PyTorch tutorial and dcgan.torch (its init calls `noBias`): a bias
  before batch norm is cancelled by its mean; the two output layers have none either. Parameters for
  latent 100, b = 64, RGB 64x64 (the tutorial's nz, ngf, ndf):
  generator, convolution weights 100*512*16 + 512*256*16 + 256*128*16 + 128*64*16 + 64*3*16 = 3,574,784
  and BN scales and shifts 2 * (512 + 256 + 128 + 64) = 1,920: 3,576,704;
  discriminator 3*64*16 + 64*128*16 + 128*256*16 + 256*512*16 + 512*16 = 2,763,776 and BN
  2 * (128 + 256 + 512) = 1,792: 2,765,568.
- Other sizes: `image_size` must be a power of two >= 16, with one stride-2 layer per doubling from 4x4.
  The widths double from b at the finest hidden layer (the generator's last, the discriminator's first), so
  the projection has b * image_size / 8 channels: 8b at 64 as in the paper, 4b at 32. MNIST's 28x28 digits
  are padded by 2 to 32x32 by the trainer, as for LeNet-5.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def dcgan_stages(image_size: int) -> int:
    """How many stride-2 layers join 4x4 and image_size x image_size: log2(image_size) - 2."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(
            f"DCGAN image_size must be a power of two >= 16 (16, 32, 64, 128, ...), got {image_size};"
            " pad smaller or odd-sized images first (MNIST 28x28: pad by 2 to 32x32)"
        )
    return image_size.bit_length() - 3


def dcgan_init_(module: nn.Module) -> None:
    """The paper's init, in place: convolution weights N(0, 0.02); batch-norm scales N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (B, latent_dim) or (B, latent_dim, 1, 1) float -> images (B, channels, image_size, image_size) in [-1, 1]."""

    def __init__(self, latent_dim: int = 100, channels: int = 3, image_size: int = 64, base_width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        stages = dcgan_stages(image_size)
        widths = [base_width * 2**i for i in reversed(range(stages))]  # at 4x4, 8x8, ..., image_size/2
        layers = [nn.ConvTranspose2d(latent_dim, widths[0], 4, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape[1:]) not in ((self.latent_dim,), (self.latent_dim, 1, 1)):
            raise ValueError(f"z must be (B, {self.latent_dim}) or (B, {self.latent_dim}, 1, 1), got {tuple(z.shape)}")
        return self.net(z.view(-1, self.latent_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """images (B, channels, image_size, image_size) float in [-1, 1] -> logits (B,) float, no sigmoid."""

    def __init__(self, channels: int = 3, image_size: int = 64, base_width: int = 64) -> None:
        super().__init__()
        self.image_size = image_size
        stages = dcgan_stages(image_size)
        widths = [base_width * 2**i for i in range(stages)]  # at image_size/2, ..., 4x4
        layers = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, bias=False))  # (B, 1, 1, 1)
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            size = f"{self.image_size}x{self.image_size}"
            raise ValueError(f"this discriminator reads {size} images, got {tuple(x.shape[-2:])}")
        return self.net(x).flatten()
