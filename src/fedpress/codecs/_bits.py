"""Bit packing helpers (little-endian bit order: element 0 goes to the lowest bits of byte 0)."""

from __future__ import annotations

import numpy as np


def packed_len(count: int, width: int) -> int:
    """Bytes needed for ``count`` values of ``width`` bits each."""
    return (count * width + 7) // 8


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Booleans -> uint8, 8 per byte; unused high bits of the last byte are 0."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, count: int) -> np.ndarray:
    """uint8 -> ``count`` booleans."""
    return np.unpackbits(packed, count=count, bitorder="little").astype(bool)


def pack_uint(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers < 2**width -> ``width`` bits each, densely packed into uint8."""
    v = np.asarray(values, dtype=np.uint32).reshape(-1)
    bits = (v[:, None] >> np.arange(width, dtype=np.uint32)) & 1
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little")


def unpack_uint(packed: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_uint`: ``count`` int64 values."""
    bits = np.unpackbits(packed, count=count * width, bitorder="little").reshape(count, width)
    return bits.astype(np.int64) @ (np.int64(1) << np.arange(width, dtype=np.int64))
