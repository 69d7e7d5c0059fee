"""``bf16``: bfloat16 (fp32 range, 8-bit significand), 2x smaller; the dtype LLMs train in.

numpy has no bfloat16, so the bits travel as uint16. Round-to-nearest-even, relative error
<= 2**-8; values beyond the bf16 range saturate to its largest finite value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .base import BF16_MAX, ArraySpec, Payload, TensorwiseCodec, from_numpy, spec, to_numpy

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch


def bf16_bits(t: torch.Tensor) -> np.ndarray:
    """float tensor -> bfloat16 bit patterns as uint16 (saturating)."""
    b = t.to(torch.float32).clamp(-BF16_MAX, BF16_MAX).to(torch.bfloat16)
    return to_numpy(b.view(torch.int16)).view(np.uint16)


def bf16_from_bits(bits: np.ndarray) -> torch.Tensor:
    """uint16 bit patterns -> float32 tensor."""
    return from_numpy(np.asarray(bits, dtype=np.uint16).view(np.int16)).view(torch.bfloat16).float()


class BF16Codec(TensorwiseCodec):
    """2 bytes per element."""

    name = "bf16"

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        return {"bf16": spec(np.uint16, (int(np.prod(shape)),), bf16=True)}

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        return {"bf16": bf16_bits(flat)}

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        return bf16_from_bits(fields["bf16"])
