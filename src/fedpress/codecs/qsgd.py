"""``qsgd``: unbiased stochastic quantisation (Alistarh et al., 2017).

Why: unbiased, so it averages well across clients without error feedback. Each bucket (the whole
tensor by default, or ``bucket_size`` elements) sends its L2 norm (fp32); each element sends a
sign bit and a level ``l`` in ``[0, levels]`` chosen by stochastic rounding of
``|x| / norm * levels``, decoding to ``sign * norm * l / levels``. Levels are bit-packed with
``levels.bit_length()`` bits (5 for the default 16), so 6 bits per element (~5.3x). The random
stream is sender state (``state_dict``); ``seed`` makes it reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._bits import pack_bits, pack_uint, packed_len, unpack_bits, unpack_uint
from .base import (
    ArraySpec,
    Payload,
    TensorwiseCodec,
    check_int,
    set_rng_state,
    spec,
    to_numpy,
)

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch

_FP32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class QSGDOptions:
    """``levels`` (1..255), ``seed`` (None: fresh entropy), ``bucket_size`` (None: whole tensor)."""

    levels: int = 16
    seed: int | None = None
    bucket_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", check_int("qsgd", "levels", self.levels, 1, 255))
        if self.seed is not None:
            object.__setattr__(self, "seed", check_int("qsgd", "seed", self.seed, 0))
        if self.bucket_size is not None:
            bucket = check_int("qsgd", "bucket_size", self.bucket_size, 1)
            object.__setattr__(self, "bucket_size", bucket)


class QSGDCodec(TensorwiseCodec):
    """fp32 norm per bucket + packed sign bits + packed levels per tensor."""

    name = "qsgd"
    Options = QSGDOptions
    options: QSGDOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._gen = torch.Generator()
        if self.options.seed is None:
            self._gen.seed()
        else:
            self._gen.manual_seed(self.options.seed)

    @property
    def bits_per_level(self) -> int:
        return int(self.options.levels).bit_length()

    def _buckets(self, n: int) -> tuple[int, int]:
        """(number of buckets, bucket length)."""
        if self.options.bucket_size is None:
            return 1, n
        b = self.options.bucket_size
        return -(-n // b), b

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        n = int(np.prod(shape))
        return {
            "norm": spec(np.float32, (self._buckets(n)[0],), low=0.0),
            "sign": spec(np.uint8, (packed_len(n, 1),)),
            "level": spec(np.uint8, (packed_len(n, self.bits_per_level),)),
        }

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        # numpy for the elementwise math: torch's CPU floor kernel is slow on a busy machine
        x32 = flat.numpy()
        n = x32.size
        s = self.options.levels
        nb, length = self._buckets(n)
        x = np.pad(x32.astype(np.float64), (0, nb * length - n)).reshape(nb, length)
        norm64 = np.sqrt(np.square(x).sum(axis=1))
        if bool((norm64 > _FP32_MAX).any()):
            raise ValueError(f"update {name!r} has a norm beyond float32 range; cannot qsgd-encode")
        norm = norm64.astype(np.float32)
        safe = np.where(norm > 0, norm, np.float32(1.0)).astype(np.float64)
        r = np.clip(np.abs(x) / safe[:, None] * s, 0, s)
        low = np.floor(r)
        u = torch.rand(r.shape, generator=self._gen, dtype=torch.float64).numpy()
        level = np.clip(low + (u < r - low), 0, s).astype(np.int64).reshape(-1)[:n]
        negative = (x32 < 0) & (level > 0)
        return {
            "norm": norm,
            "sign": pack_bits(negative),
            "level": pack_uint(level, self.bits_per_level),
        }

    def check_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> str | None:
        n = int(np.prod(shape))
        s = self.options.levels
        if n and s < 2**self.bits_per_level - 1:
            top = int(unpack_uint(fields["level"], n, self.bits_per_level).max())
            if top > s:
                return f"level {top} above the maximum {s}"
        return None

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        n = int(np.prod(shape))
        nb, length = self._buckets(n)
        level = unpack_uint(fields["level"], n, self.bits_per_level).astype(np.float64)
        sign = 1.0 - 2.0 * unpack_bits(fields["sign"], n)
        norm = np.repeat(fields["norm"].astype(np.float64), length)[:n]
        return torch.from_numpy((sign * norm * level / self.options.levels).astype(np.float32))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"rng_state": to_numpy(self._gen.get_state())}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        for key in state:
            if key != "rng_state":
                raise ValueError(f"unexpected qsgd state key {key!r}")
        if "rng_state" in state:
            set_rng_state(self._gen, state["rng_state"], "qsgd")
