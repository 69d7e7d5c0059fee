"""ResNet-3, CG-FedLLM's main autoencoder (SPEC section 1).

Encoder: stem, six stride-2 3x3 conv + BN + ReLU stages (channels 2, 4, 8, 16, 32, 64), three
residual blocks at 64 channels, a 1x1 projection to the latent channels (64 at 1/64, as SPEC's
64 x 64 x 32 latent for a 4096 x 2048 input). Decoder mirrors it: 1x1 back to 64, three residual
blocks, six stride-2 transposed convs, reflection pad + 7x7 conv + tanh. About 0.23 M
parameters per side. Deviations from SPEC: the stem and the last up-stage have 2 channels, not 1
(see base.stem), and GroupNorm replaces BatchNorm (see base.norm).
"""

from __future__ import annotations

import torch
from torch import nn

from fedpress.autoencoders.base import Autoencoder, conv_bn_relu, head, norm, stem

CHANNELS = (2, 4, 8, 16, 32, 64)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            norm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


class ResNet3(Autoencoder):
    arch = "resnet3"

    def __init__(self, compression: int = 64) -> None:
        super().__init__(compression)
        widths = (CHANNELS[0], *CHANNELS)
        self.encoder = nn.Sequential(
            stem(CHANNELS[0]),
            *(conv_bn_relu(a, b, stride=2) for a, b in zip(widths, widths[1:], strict=False)),
            *(ResidualBlock(CHANNELS[-1]) for _ in range(3)),
            nn.Conv2d(CHANNELS[-1], self.latent_channels, 1),
        )
        back = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Conv2d(self.latent_channels, CHANNELS[-1], 1),
            *(ResidualBlock(CHANNELS[-1]) for _ in range(3)),
            *(up(a, b) for a, b in zip(back, back[1:], strict=False)),
            head(CHANNELS[0]),
        )
