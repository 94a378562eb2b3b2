"""A convolutional encoder and decoder for a VAE (Kingma, Welling 2013, "Auto-encoding variational Bayes").

    ConvEncoder, x (B, C, 28, 28)
      -> conv 4x4 stride 2 padding 1, w maps (14x14) -> ReLU
      -> conv 4x4 stride 2 padding 1, 2w maps (7x7) -> ReLU -> flatten 2w * 7 * 7
      -> linear 2 * latent_dim, split into mu and logvar, each (B, latent_dim)

    ConvDecoder, z (B, latent_dim)
      -> linear 2w * 7 * 7 -> ReLU -> (2w, 7, 7)
      -> conv-transpose 4x4 stride 2 padding 1, w maps (14x14) -> ReLU
      -> conv-transpose 4x4 stride 2 padding 1, C maps (28x28): logits (computed as a sub-pixel convolution,
         `subpixel_transposed_conv`: the same function of the same weights, faster on a CPU)

For 32x32 images the maps are 16x16 and 8x8 instead; any image_size divisible by 4 works the same way.

Kept from the paper: the encoder gives the mean and log-variance of a diagonal Gaussian q(z|x), and the
decoder gives the parameters of p(x|z) per pixel. Our documented choices: the paper's encoder and decoder
were MLPs with one hidden layer (500 tanh units for MNIST, weights drawn from N(0, 0.01)); these are small
strided convolutions with ReLU and PyTorch's default init, which suit images better. There is no batch
norm, so a sample's encoding never depends on the rest of its batch.

The decoder returns unnormalised logits and the trainer chooses the likelihood: Bernoulli (BCE-with-logits
against binarized or [0, 1] MNIST pixels) or, e.g., a Gaussian mean after a sigmoid.

Parameters, for 1x28x28, latent 32, w 32: encoder 1*32*16 + 32 = 544, 32*64*16 + 64 = 32,832,
3136*64 + 64 = 200,768, in all 234,144; decoder 32*3136 + 3136 = 103,488, 64*32*16 + 32 = 32,800,
32*1*16 + 1 = 513, in all 136,801.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def coarse_size(image_size: int) -> int:
    """The side of the coarsest maps, after two stride-2 halvings: 28 -> 7, 32 -> 8."""
    if image_size % 4:
        raise ValueError(f"the conv VAE halves the image twice, so image_size must be divisible by 4, got {image_size}")
    return image_size // 4


class ConvEncoder(nn.Module):
    """x (B, in_channels, image_size, image_size) float, e.g. pixels in [0, 1] -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, latent_dim: int = 32, width: int = 32) -> None:
        super().__init__()
        side = coarse_size(image_size)
        self.conv1 = nn.Conv2d(in_channels, width, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)
        self.fc = nn.Linear(2 * width * side * side, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.conv2(F.relu(self.conv1(x)))).flatten(1)  # (B, 2w * side * side)
        mu, logvar = self.fc(h).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """z (B, latent_dim) float -> logits (B, out_channels, image_size, image_size) float, unbounded."""

    def __init__(self, latent_dim: int = 32, out_channels: int = 1, image_size: int = 28, width: int = 32) -> None:
        super().__init__()
        self.side = coarse_size(image_size)
        self.width = width
        self.fc = nn.Linear(latent_dim, 2 * width * self.side * self.side)
        self.deconv1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc(z)).view(-1, 2 * self.width, self.side, self.side)
        return subpixel_transposed_conv(self.deconv2, F.relu(self.deconv1(h)))


# A transposed convolution of kernel 4, stride 2, padding 1 computes output row 2p + a from input rows p - 1, p and
# p + 1 through these kernel rows (4: a zero row, that input row does not reach it); columns alike.
PHASE_TAPS = torch.tensor([[3, 1, 4], [4, 2, 0]])


def subpixel_transposed_conv(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for a ConvTranspose2d of kernel 4, stride 2, padding 1, computed as one 3x3 convolution to 4x the
    channels (one group per output phase: row parity a, column parity b, with the kernel taps of PHASE_TAPS and
    zeros elsewhere) followed by pixel_shuffle(2). The same function of the same parameters, gradients included.
    Why: to the decoder's last layer (32 maps to 1 or 3) oneDNN's transposed convolution ran 2.5x slower on a
    CPU (AVX2 EPYC, one thread, 8,192 latents as the IWAE bound decodes them: 0.65 s against 0.26 s), and the
    IWAE bound at k = 5000 decodes 50 million latents."""
    if (layer.kernel_size, layer.stride, layer.padding, layer.output_padding) != ((4, 4), (2, 2), (1, 1), (0, 0)):
        raise ValueError(f"needs a transposed convolution of kernel 4, stride 2, padding 1, got {layer}")
    padded = F.pad(layer.weight, (0, 1, 0, 1))  # (in, out, 5, 5): row and column 4 are zeros
    taps = PHASE_TAPS.to(padded.device)
    phased = padded[:, :, taps[:, None, :, None], taps[None, :, None, :]]  # (in, out, a, b, 3, 3)
    weight = phased.permute(1, 2, 3, 0, 4, 5).flatten(0, 2)  # (out * 4, in, 3, 3): pixel_shuffle's channel order
    bias = None if layer.bias is None else layer.bias.repeat_interleave(4)
    return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), 2)
