"""Interface shared by the autoencoder architectures: (B, 1, H, W) -> latent -> (B, 1, H, W).

Every architecture down-samples H and W by 64 (six stride-2 stages, or the same total factor)
and projects to `4096 / compression` latent numbers per 64 x 64 block, so the latent holds
exactly `H * W / compression` numbers whatever the architecture: the rate is the config's, not
the architecture's. Decoders end in tanh: inputs are scaled to [-1, 1] first (see layout.py).
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK = 64  # total down-sampling factor per side


def norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation (GroupNorm with one group) where SPEC has BatchNorm.

    Why: a codec must map one update to one latent whatever else is in the batch, and
    BatchNorm's running statistics (trained on crops, few steps) made the eval-mode decoder
    output several times the input's energy in our first TGAP runs (SNR -7 dB)."""
    return nn.GroupNorm(1, channels)


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


def stem(c_out: int = 2) -> nn.Sequential:
    """Reflection pad + 3x3 conv. Two output channels, not SPEC's one: a single channel
    followed by ReLU would erase the sign of every negative input before any down-sampling."""
    return nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(1, c_out, 3, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


def head(c_in: int = 2) -> nn.Sequential:
    """Reflection pad + 7x7 conv to one channel + tanh (SPEC's decoder output)."""
    return nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(c_in, 1, 7), nn.Tanh())


class Autoencoder(nn.Module):
    """`encoder` runs on the client, `decoder` on the server; both are plain nn.Modules."""

    arch: str = ""
    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, compression: int) -> None:
        super().__init__()
        if compression < 1 or (BLOCK * BLOCK) % compression:
            raise ValueError(f"compression must divide {BLOCK * BLOCK}, got {compression}")
        self.compression = compression

    @property
    def latent_channels(self) -> int:
        return BLOCK * BLOCK // self.compression

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Latent shape (without batch) for an H x W input; H, W multiples of 64."""
        if height % BLOCK or width % BLOCK:
            raise ValueError(f"input {height}x{width} is not a multiple of {BLOCK} per side")
        return (self.latent_channels, height // BLOCK, width // BLOCK)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
