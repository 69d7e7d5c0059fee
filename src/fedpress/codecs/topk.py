"""``topk``: send only the largest-magnitude entries of each tensor (indices + values).

Why: update entries are heavy-tailed, so a few percent carry most of the energy; with error
feedback (on by default) the dropped rest is sent in later rounds. Per tensor, ``k`` entries are
kept: ``count``, or ``ceil(fraction * n)`` (at least 1; default fraction 0.01), capped at ``n``.
Indices are int32, strictly increasing; values fp32 (or fp16, saturating, with
``value_dtype="fp16"``): 8 (or 6) bytes per kept entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .base import (
    FP16_MAX,
    ArraySpec,
    Payload,
    TensorwiseCodec,
    check_int,
    from_numpy,
    spec,
    to_numpy,
)

DEFAULT_FRACTION = 0.01
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class TopKOptions:
    """Give ``fraction`` (0 < f <= 1) or ``count`` (>= 1), not both; neither: fraction 0.01."""

    fraction: float | None = None
    count: int | None = None
    value_dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.fraction is not None and self.count is not None:
            raise ValueError("topk takes either option fraction or option count, not both")
        if self.fraction is not None:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
                raise ValueError(f"topk option fraction must be in (0, 1], got {f!r}")
            object.__setattr__(self, "fraction", float(f))
        if self.count is not None:
            object.__setattr__(self, "count", check_int("topk", "count", self.count, 1))
        if self.value_dtype not in ("fp32", "fp16"):
            raise ValueError(
                f"topk option value_dtype must be 'fp32' or 'fp16', got {self.value_dtype!r}"
            )


class TopKCodec(TensorwiseCodec):
    """``k`` int32 indices + ``k`` values per tensor."""

    name = "topk"
    Options = TopKOptions
    options: TopKOptions

    def k_for(self, n: int) -> int:
        """Entries kept of a tensor with ``n`` elements."""
        if self.options.count is not None:
            return min(self.options.count, n)
        fraction = DEFAULT_FRACTION if self.options.fraction is None else self.options.fraction
        return min(max(1, math.ceil(fraction * n)), n)

    def _value_dtype(self) -> type:
        return np.float16 if self.options.value_dtype == "fp16" else np.float32

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        n = int(np.prod(shape))
        if n > _INT32_MAX:
            raise ValueError(f"topk indexes with int32; a tensor of {n} elements is too large")
        k = self.k_for(n)
        return {
            "idx": spec(np.int32, (k,), low=0, high=n - 1, increasing=True),
            "val": spec(self._value_dtype(), (k,)),
        }

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        k = self.k_for(flat.numel())
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        vals = flat[idx]
        if self.options.value_dtype == "fp16":
            vals = vals.clamp(-FP16_MAX, FP16_MAX).to(torch.float16)
        return {"idx": to_numpy(idx.to(torch.int32)), "val": to_numpy(vals)}

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        out = torch.zeros(int(np.prod(shape)), dtype=torch.float32)
        idx = from_numpy(fields["idx"]).to(torch.int64)
        out[idx] = from_numpy(fields["val"]).to(torch.float32)
        return out
