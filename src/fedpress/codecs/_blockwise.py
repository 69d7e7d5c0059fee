"""Shared absmax block quantisation for ``int8`` and ``int4``.

The flattened tensor is cut into blocks of ``block_size`` elements; each block stores one fp32
scale ``absmax / qmax`` and integers ``round(x / scale)`` in ``[-qmax, qmax]``, so the error is
at most ``scale / 2 = absmax / (2 * qmax)`` per element. Small blocks keep one outlier from
flattening the resolution of the whole tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import check_int

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch


@dataclass(frozen=True)
class BlockOptions:
    """``block_size``: elements per absmax block (one fp32 scale each)."""

    block_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "block_size", check_int("int8/int4", "block_size", self.block_size, 1)
        )


def num_blocks(n: int, block_size: int) -> int:
    return -(-n // block_size)


def quantize_blocks(
    flat: torch.Tensor, block_size: int, qmax: int
) -> tuple[np.ndarray, np.ndarray]:
    """1-D float32 -> (int64 levels in [-qmax, qmax] of length n, fp32 scales per block).

    numpy, not torch: torch's CPU round kernel costs milliseconds per call on a busy machine.
    """
    x = flat.detach().cpu().numpy()
    n = x.size
    nb = num_blocks(n, block_size)
    blocks = np.pad(x, (0, nb * block_size - n)).reshape(nb, block_size)
    scale = (np.abs(blocks).max(axis=1, initial=0.0) / np.float32(qmax)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(blocks / safe[:, None]), -qmax, qmax).astype(np.int64)
    return q.reshape(-1)[:n], scale


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, block_size: int) -> torch.Tensor:
    """Inverse of :func:`quantize_blocks` (float32 tensor, length ``q.size``)."""
    n = q.size
    nb = scale.size
    blocks = np.pad(q.astype(np.float32), (0, nb * block_size - n)).reshape(nb, block_size)
    with np.errstate(over="ignore"):  # a hostile scale may overflow; decode rejects non-finite
        out = blocks * scale.astype(np.float32)[:, None]
    return torch.from_numpy(out.reshape(-1)[:n].copy())
