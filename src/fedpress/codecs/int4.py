"""``int4``: absmax-per-block 4-bit quantisation, two values per byte (~7.1x vs fp32 at block 64).

Levels in [-7, 7] stored as nibbles ``level + 8`` (1..15; 0 is never produced and is rejected),
even elements in the low nibble; an odd tail is padded with nibble 8 (zero). Error <= absmax / 14
per block; see :mod:`fedpress.codecs._blockwise`.
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

QMAX = 7


def pack_nibbles(levels: np.ndarray) -> np.ndarray:
    """Signed levels in [-7, 7] -> uint8, two per byte."""
    v = (np.asarray(levels, dtype=np.int64) + 8).astype(np.uint8)
    if v.size % 2:
        v = np.append(v, np.uint8(8))
    return (v[0::2] | (v[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    """uint8 -> ``n`` signed levels (int64)."""
    out = np.empty(packed.size * 2, dtype=np.int64)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:n] - 8


class Int4Codec(TensorwiseCodec):
    """``ceil(n / 2)`` packed bytes + ``ceil(n / block_size)`` fp32 scales per tensor."""

    name = "int4"
    Options = BlockOptions
    options: BlockOptions

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        n = int(np.prod(shape))
        return {
            "q4": spec(np.uint8, ((n + 1) // 2,)),
            "scale": spec(np.float32, (num_blocks(n, self.options.block_size),), low=0.0),
        }

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        q, scale = quantize_blocks(flat, self.options.block_size, QMAX)
        return {"q4": pack_nibbles(q), "scale": scale}

    def check_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> str | None:
        packed = fields["q4"]
        n = int(np.prod(shape))
        if n and (unpack_nibbles(packed, n) < -QMAX).any():
            return "nibble 0 (level -8) is never produced"
        if n % 2 and (packed[-1] >> 4) != 8:
            return "padding nibble of the odd tail is not 8"
        return None

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        n = int(np.prod(shape))
        q = unpack_nibbles(fields["q4"], n)
        return dequantize_blocks(q, fields["scale"], self.options.block_size)
