"""1D-CNN / up-sampling autoencoder (SPEC: "reported at about 3.2 %"; layers not public).

Our design, in the spirit of the paper: the image is read as one 1-D stream (the layout's
order), four stride-4 Conv1d stages (channels 8, 16, 32, 64) shrink it 256-fold, a 1x1 conv
projects to `256 / compression` channels (4 at 1/64), so the latent has the same number of
values as the 2-D models'. The decoder up-samples (linear interpolation x4 + Conv1d + norm +
ReLU, four times) and ends in a Conv1d + tanh. GroupNorm where BatchNorm would be (base.norm).
Supports compression up to 256.
"""

from __future__ import annotations

import torch
from torch import nn

from fedpress.autoencoders.base import Autoencoder, norm

CHANNELS = (8, 16, 32, 64)
STRIDE = 4
DOWN = STRIDE ** len(CHANNELS)  # 256


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, 8, stride=STRIDE, padding=2, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=STRIDE, mode="linear", align_corners=False),
        nn.Conv1d(c_in, c_out, 9, padding=4, bias=False),
        norm(c_out),
        nn.ReLU(inplace=True),
    )


class CNN1D(Autoencoder):
    arch = "cnn1d"

    def __init__(self, compression: int = 64) -> None:
        super().__init__(compression)
        if DOWN % compression:
            raise ValueError(f"cnn1d supports compression dividing {DOWN}, got {compression}")
        channels = DOWN // compression
        widths = (1, *CHANNELS)
        self.encoder = nn.Sequential(
            *(_down(a, b) for a, b in zip(widths, widths[1:], strict=False)),
            nn.Conv1d(CHANNELS[-1], channels, 1),
        )
        back = (CHANNELS[-1], *CHANNELS[::-1])
        self.decoder = nn.Sequential(
            nn.Conv1d(channels, CHANNELS[-1], 1),
            *(_up(a, b) for a, b in zip(back, back[1:], strict=False)),
            nn.Conv1d(CHANNELS[0], 1, 9, padding=4),
            nn.Tanh(),
        )
        self._channels = channels

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        super().latent_shape(height, width)  # same alignment rule as the 2-D models
        return (self._channels, height * width // DOWN)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.reshape(x.shape[0], 1, -1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        length = out.shape[-1]
        # Wrap back to 2-D: the layout's width is a multiple of 64; the caller reshapes anyway.
        return out.reshape(out.shape[0], 1, 1, length)
