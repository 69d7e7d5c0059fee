"""U-Former autoencoders with 0, 1 or 2 transformer blocks (SPEC: layer details not public).

Our design, in the spirit of the paper's U-Former: the same convolutional down path as ResNet-3
(stem + six stride-2 stages to 64 channels), then `blocks` pre-norm transformer encoder layers
(64-dim tokens, 4 heads, MLP 128) over the 1/64 x 1/64 grid of tokens (global attention, no
positional embedding: the convolutions already encode position), then a 1x1 projection to the
latent. The decoder mirrors it: 1x1, the same number of transformer layers, six stages of
bilinear up-sampling + 3x3 conv, reflection pad + 7x7 conv + tanh. A U-Net's skip connections
cannot exist here (the decoder runs on the server, without the encoder's feature maps), so the
"U" is only the symmetric down/up path.
"""

from __future__ import annotations

import torch
from torch import nn

from fedpress.autoencoders.base import Autoencoder, conv_bn_relu, head, stem

CHANNELS = (2, 4, 8, 16, 32, 64)
DIM = CHANNELS[-1]


class TokenMixer(nn.Module):
    """Transformer layers over the spatial grid of a (B, C, h, w) feature map."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                DIM,
                nhead=4,
                dim_feedforward=2 * DIM,
                dropout=0.0,
                batch_first=True,
                norm_first=True,
            )
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return x
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        conv_bn_relu(c_in, c_out),
    )


class UFormer(Autoencoder):
    def __init__(self, compression: int = 64, blocks: int = 1) -> None:
        super().__init__(compression)
        if blocks not in (0, 1, 2):
            raise ValueError(f"U-Former has 0, 1 or 2 transformer blocks, got {blocks}")
        self.arch = f"uformer{blocks}"
        widths = (CHANNELS[0], *CHANNELS)
        self.encoder = nn.Sequential(
            stem(CHANNELS[0]),
            *(conv_bn_relu(a, b, stride=2) for a, b in zip(widths, widths[1:], strict=False)),
            TokenMixer(blocks),
            nn.Conv2d(DIM, self.latent_channels, 1),
        )
        back = widths[::-1]
        self.decoder = nn.Sequential(
            nn.Conv2d(self.latent_channels, DIM, 1),
            TokenMixer(blocks),
            *(up(a, b) for a, b in zip(back, back[1:], strict=False)),
            head(CHANNELS[0]),
        )
