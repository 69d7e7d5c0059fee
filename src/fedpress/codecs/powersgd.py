"""``powersgd``: rank-r approximation of each matrix by power iteration (Vogels et al., 2019).

Why: an m x n update costs r(m + n) floats instead of mn. A tensor of >= 2 dims is viewed as
``(shape[0], rest)``; it is compressed when ``rank * (m + n) < m * n``, else (1-D tensors, small
or thin matrices) sent raw fp32. Per round: ``P = orth(M Q)``, ``Q = M^T P`` (repeated
``power_iterations`` times); the receiver rebuilds ``P Q^T`` and needs only P and Q. With
``warm_start`` the sender reuses last round's Q (sender state, see ``state_dict``), which makes one
iteration per round track the dominant subspace. Biased: use with error feedback (the default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .base import (
    ArraySpec,
    Payload,
    TensorwiseCodec,
    check_bool,
    check_int,
    from_numpy,
    set_rng_state,
    spec,
    to_numpy,
)

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch


@dataclass(frozen=True)
class PowerSGDOptions:
    """``rank``, ``power_iterations`` per round, ``warm_start``, ``seed`` of the initial Q."""

    rank: int = 4
    power_iterations: int = 1
    warm_start: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", check_int("powersgd", "rank", self.rank, 1))
        its = check_int("powersgd", "power_iterations", self.power_iterations, 1)
        object.__setattr__(self, "power_iterations", its)
        object.__setattr__(
            self, "warm_start", check_bool("powersgd", "warm_start", self.warm_start)
        )
        object.__setattr__(self, "seed", check_int("powersgd", "seed", self.seed, 0))


def orthonormalize(p: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of a tall ``p`` (reduced QR).

    numpy, not torch: torch's CPU QR costs ~8 ms per small matrix on a busy machine (~0.1 ms here).
    """
    return torch.from_numpy(np.linalg.qr(p.numpy(), mode="reduced")[0].astype(np.float32))


class PowerSGDCodec(TensorwiseCodec):
    """P (m x rank) + Q (n x rank) fp32 per compressed matrix, raw fp32 otherwise."""

    name = "powersgd"
    Options = PowerSGDOptions
    options: PowerSGDOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._q: dict[str, torch.Tensor] = {}
        self._gen = torch.Generator().manual_seed(self.options.seed)

    def matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """(m, n) if a tensor of ``shape`` is sent low-rank, else None (sent raw)."""
        if len(shape) < 2:
            return None
        m, n = shape[0], math.prod(shape[1:])
        return (m, n) if self.options.rank * (m + n) < m * n else None

    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        mn = self.matrix_shape(shape)
        if mn is None:
            return {"raw": spec(np.float32, (math.prod(shape),))}
        r = self.options.rank
        return {"p": spec(np.float32, (mn[0], r)), "q": spec(np.float32, (mn[1], r))}

    def _initial_q(self, name: str, n: int) -> torch.Tensor:
        r = self.options.rank
        q = self._q.get(name) if self.options.warm_start else None
        if q is None or q.shape != (n, r) or not bool(torch.isfinite(q).all()) or not q.any():
            q = torch.randn(n, r, generator=self._gen)
        return q

    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        mn = self.matrix_shape(shape)
        if mn is None:
            return {"raw": to_numpy(flat)}
        m = flat.reshape(mn)
        q = self._initial_q(name, mn[1])
        for _ in range(self.options.power_iterations):
            p = orthonormalize(m @ q)
            q = m.T @ p
        if self.options.warm_start:
            self._q[name] = q.clone()
        return {"p": to_numpy(p), "q": to_numpy(q)}

    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        if "raw" in fields:
            return from_numpy(fields["raw"])
        return from_numpy(fields["p"]) @ from_numpy(fields["q"]).T

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"q/{name}": to_numpy(q) for name, q in self._q.items()}
        state["rng_state"] = to_numpy(self._gen.get_state())
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        q: dict[str, torch.Tensor] = {}
        for key, arr in state.items():
            if key == "rng_state":
                set_rng_state(self._gen, arr, "powersgd")
            elif key.startswith("q/"):
                a = np.asarray(arr)
                if a.ndim != 2 or a.shape[1] != self.options.rank:
                    r = self.options.rank
                    raise ValueError(f"powersgd state {key!r}: shape {a.shape}, expected (n, {r})")
                q[key[2:]] = from_numpy(a.astype(np.float32))
            else:
                raise ValueError(f"unexpected powersgd state key {key!r}")
        self._q = q
