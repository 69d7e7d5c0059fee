"""``topk``: send only the largest-magnitude entries of each tensor (indices + values).

Why: update entries are heavy-tailed, so a few percent carry most of the energy; with error
feedback (on by default) the dropped rest is sent in later rounds. Per tensor, ``k`` entries are
kept: ``count``, or ``ceil(fraction * n)`` (at least 1; default fraction 0.01), capped at ``n``.
Indices are int32, strictly increasing, or with ``packed_indices`` packed at the bits a
position in that tensor needs (13 for a 576 x 8 LoRA matrix); values fp32, fp16 (saturating)
or int8 (symmetric, one fp32 absmax scale per tensor: ``int8``'s quantiser with the kept
values as one block). Per kept entry: 8 bytes by default,
6 with fp16 values, 2.6 with int8 values and packed indices on a 576 x 8 matrix, so at equal
bytes the last keeps 2.3x as many entries as fp16 + int32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._bits import pack_uint, packed_len, unpack_uint
from ._blockwise import dequantize_blocks, quantize_blocks
from .base import (
    FP16_MAX,
    ArraySpec,
    Payload,
    TensorwiseCodec,
    check_bool,
    check_int,
    from_numpy,
    spec,
    to_numpy,
)
from .int8 import QMAX

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch

DEFAULT_FRACTION = 0.01
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class TopKOptions:
    """``fraction`` (0 < f <= 1) of each tensor's entries, or ``count`` (>= 1) of them: a
    ``count`` replaces the fraction, so give it with the fraction left at its default."""

    fraction: float = DEFAULT_FRACTION
    count: int | None = None
    value_dtype: str = "fp32"
    packed_indices: bool = False

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"topk option fraction must be in (0, 1], got {f!r}")
        object.__setattr__(self, "fraction", float(f))
        if self.count is not None:
            if self.fraction != DEFAULT_FRACTION:
                raise ValueError("topk takes either option fraction or option count, not both")
            object.__setattr__(self, "count", check_int("topk", "count", self.count, 1))
        if self.value_dtype not in ("fp32", "fp16", "int8"):
            raise ValueError(
                "topk option value_dtype must be 'fp32', 'fp16' or 'int8', "
                f"got {self.value_dtype!r}"
            )
        check_bool("topk", "packed_indices", self.packed_indices)


class TopKCodec(TensorwiseCodec):
    """``k`` int32 indices + ``k`` values per tensor."""

    name = "topk"
    Options = TopKOptions
    options: TopKOptions

    def k_for(self, n: int) -> int:
        """Entries kept of a tensor with ``n`` elements."""
        if self.options.count is not None:
            return min(self.options.count, n)
        return min(max(1, math.ceil(self.options.fraction * n)), n)

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        n = int(np.prod(shape))
        if n > _INT32_MAX:
            raise ValueError(f"topk indexes with int32; a tensor of {n} elements is too large")
        k = self.k_for(n)
        if self.options.packed_indices:
            layout = {"idx": spec(np.uint8, (packed_len(k, _index_bits(n)),))}
        else:
            layout = {"idx": spec(np.int32, (k,), low=0, high=n - 1, increasing=True)}
        if self.options.value_dtype == "int8":
            layout["val"] = spec(np.int8, (k,), low=-QMAX, high=QMAX)
            layout["scale"] = spec(np.float32, (1,), low=0.0)
        else:
            float_dtype = np.float16 if self.options.value_dtype == "fp16" else np.float32
            layout["val"] = spec(float_dtype, (k,))
        return layout

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        n = flat.numel()
        k = self.k_for(n)
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        vals = flat[idx]
        payload: Payload = {}
        if self.options.packed_indices:
            payload["idx"] = pack_uint(idx.numpy(), _index_bits(n))
        else:
            payload["idx"] = to_numpy(idx.to(torch.int32))
        if self.options.value_dtype == "int8":
            levels, payload["scale"] = quantize_blocks(vals, k, QMAX)  # one block: the tensor's
            payload["val"] = levels.astype(np.int8)
        elif self.options.value_dtype == "fp16":
            payload["val"] = to_numpy(vals.clamp(-FP16_MAX, FP16_MAX).to(torch.float16))
        else:
            payload["val"] = to_numpy(vals)
        return payload

    def _indices(self, fields: Mapping[str, np.ndarray], n: int) -> np.ndarray:
        if not self.options.packed_indices:
            return fields["idx"]
        return unpack_uint(fields["idx"], self.k_for(n), _index_bits(n))

    def check_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> str | None:
        if not self.options.packed_indices:
            return None  # the int32 field's spec bounds and orders them
        n = int(np.prod(shape))
        idx = self._indices(fields, n)
        if idx.size and (idx[-1] >= n or np.any(np.diff(idx) <= 0)):
            return "packed indices out of range or not strictly increasing"
        return None

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        n = int(np.prod(shape))
        out = torch.zeros(n, dtype=torch.float32)
        idx = torch.from_numpy(np.asarray(self._indices(fields, n), dtype=np.int64))
        if self.options.value_dtype == "int8":
            vals = dequantize_blocks(fields["val"], fields["scale"], fields["val"].size)
        else:
            vals = from_numpy(fields["val"]).to(torch.float32)
        out[idx] = vals
        return out


def _index_bits(n: int) -> int:
    """Bits a position in a tensor of ``n`` elements needs."""
    return max(1, (n - 1).bit_length())
