"""``none``: the update as plain float32; the uncompressed baseline of every ratio."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .base import ArraySpec, Payload, TensorwiseCodec, from_numpy, spec, to_numpy

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch


class IdentityCodec(TensorwiseCodec):
    """4 bytes per element, lossless."""

    name = "none"

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        return {"fp32": spec(np.float32, (int(np.prod(shape)),))}

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        return {"fp32": to_numpy(flat)}

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        return from_numpy(fields["fp32"])
