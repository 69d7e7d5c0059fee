"""``int8``: absmax-per-block 8-bit quantisation (fp32 scale per block of 64: ~3.76x vs fp32).

Levels in [-127, 127] (-128 is never produced and is rejected), error <= absmax / 254 per
block; see :mod:`fedpress.codecs._blockwise`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ._blockwise import BlockOptions, dequantize_blocks, num_blocks, quantize_blocks
from .base import ArraySpec, Payload, TensorwiseCodec, spec

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch

QMAX = 127


class Int8Codec(TensorwiseCodec):
    """``n`` int8 levels + ``ceil(n / block_size)`` fp32 scales per tensor."""

    name = "int8"
    Options = BlockOptions
    options: BlockOptions

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        n = int(np.prod(shape))
        return {
            "q": spec(np.int8, (n,), low=-QMAX, high=QMAX),
            "scale": spec(np.float32, (num_blocks(n, self.options.block_size),), low=0.0),
        }

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        q, scale = quantize_blocks(flat, self.options.block_size, QMAX)
        return {"q": q.astype(np.int8), "scale": scale}

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        return dequantize_blocks(fields["q"], fields["scale"], self.options.block_size)
