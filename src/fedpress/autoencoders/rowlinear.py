"""Row-linear autoencoder: a learned linear code of every image row (our addition, not in SPEC).

Why: with the rank-vector layout every image row is one LoRA rank-vector, a direction in the
model's hidden space, and its column index *is* the hidden dimension. Convolutions are
translation-equivariant and cannot use which dimension a column is; a dense map over the row
can. On SmolLM2 TGAP snapshots it reaches validation cosine 0.39 where the convolutional
autoencoders reach ~0.02 (benchmarks/results/cg_fedllm_sst2.md). Encoder:
Linear(W -> W / compression) per row, no bias; decoder: Linear back + tanh. Adam on MSE drives
it towards the rows' principal subspace.
"""

from __future__ import annotations

import torch
from torch import nn

from fedpress.autoencoders.base import BLOCK, Autoencoder


class RowLinear(Autoencoder):
    arch = "rowlinear"

    def __init__(self, compression: int = 64, width: int = 0) -> None:
        super().__init__(compression)
        if width <= 0 or width % BLOCK or width % compression:
            raise ValueError(
                f"rowlinear needs the layout width (a multiple of 64 divisible by the "
                f"compression), got width {width}, compression {compression}"
            )
        self.width = width
        code = width // compression
        self.encoder = nn.Linear(width, code, bias=False)
        self.decoder = nn.Sequential(nn.Linear(code, width, bias=False), nn.Tanh())

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        super().latent_shape(height, width)
        if width != self.width:
            raise ValueError(f"rowlinear was built for width {self.width}, got {width}")
        return (height, width // self.compression)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x[:, 0])  # (B, H, W) -> (B, H, code)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)[:, None]
