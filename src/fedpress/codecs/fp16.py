"""``fp16``: IEEE half precision, 2x smaller; fine for updates, whose magnitudes are small.

Values beyond +-65504 saturate to +-65504 (no Inf on the wire); relative error <= 2**-11 for
normal values, absolute error <= 2**-25 in the subnormal range (|x| < 6.1e-5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .base import FP16_MAX, ArraySpec, Payload, TensorwiseCodec, from_numpy, spec, to_numpy

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch


class FP16Codec(TensorwiseCodec):
    """2 bytes per element."""

    name = "fp16"

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        return {"fp16": spec(np.float16, (int(np.prod(shape)),))}

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        return {"fp16": to_numpy(flat.clamp(-FP16_MAX, FP16_MAX).to(torch.float16))}

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        return from_numpy(fields["fp16"]).to(torch.float32)
