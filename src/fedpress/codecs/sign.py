"""``sign``: scaled sign compression, 1 bit per element + one fp32 scale per tensor (~32x).

Decodes to ``mean(|x|) * sign(x)`` (zeros count as positive), the scaled sign of EF-SignSGD
(Karimireddy et al., 2019), which converges when paired with error feedback (the default).
Bits are packed 8 per byte, little-endian bit order, bit 1 = negative.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ._bits import pack_bits, packed_len, unpack_bits
from .base import ArraySpec, Payload, TensorwiseCodec, spec

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch


class SignCodec(TensorwiseCodec):
    """``ceil(n / 8)`` bytes of sign bits + one fp32 scale per tensor."""

    name = "sign"

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        n = int(np.prod(shape))
        return {
            "scale": spec(np.float32, (1,), low=0.0),
            "bits": spec(np.uint8, (packed_len(n, 1),)),
        }

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        scale = flat.abs().to(torch.float64).mean().item() if flat.numel() else 0.0
        return {
            "scale": np.array([scale], dtype=np.float32),
            "bits": pack_bits((flat < 0).numpy()),
        }

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        n = int(np.prod(shape))
        negative = unpack_bits(fields["bits"], n)
        signs = 1.0 - 2.0 * negative.astype(np.float32)
        return torch.from_numpy(signs * np.float32(fields["scale"][0]))
