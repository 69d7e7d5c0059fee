"""Error feedback as one wrapper around any codec (Seide et al., 2014; Karimireddy et al., 2019).

Why: biased compressors (top-k, low rank, sign) drop part of every update; carrying the dropped
part (the residual) into the next round makes the sum of what is sent track the sum of the
updates, so nothing is lost for good. Sender side only: ``encode`` adds the residual, encodes
with the inner codec, decodes its own payload and keeps ``corrected - decoded``. Residuals of
tensors absent from an update are kept for a later update that has them. The residual (and the
inner codec's state) is in ``state_dict`` so the caller can persist it in Flower's
``Context.state`` across rounds and process restarts. The payload format is the inner codec's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import (
    ArraySpec,
    Codec,
    Payload,
    Shapes,
    Update,
    check_update,
    from_numpy,
    shapes_of,
    to_numpy,
)

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch

_RESIDUAL = "residual/"
_INNER = "inner/"


class ErrorFeedback(Codec):
    """Wraps ``inner``; decoding and validation are the inner codec's."""

    name = "error_feedback"

    def __init__(self, inner: Codec) -> None:
        if not isinstance(inner, Codec):
            raise TypeError(f"ErrorFeedback wraps a Codec, got {type(inner).__name__}")
        self.inner = inner
        self._residual: dict[str, torch.Tensor] = {}

    @property
    def label(self) -> str:
        return f"{self.inner.label}+ef"

    def __repr__(self) -> str:
        return f"ErrorFeedback({self.inner!r})"

    @property
    def residual(self) -> dict[str, torch.Tensor]:
        """Current residuals (read-only view: copies)."""
        return {k: v.clone() for k, v in self._residual.items()}

    def reset(self) -> None:
        """Forget all residuals."""
        self._residual.clear()

    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        check_update(update)
        corrected: Update = {}
        for name, t in update.items():
            t32 = t.detach().to(device="cpu", dtype=torch.float32)
            res = self._residual.get(name)
            if res is not None:
                if res.shape != t32.shape:
                    raise ValueError(
                        f"update {name!r} has shape {tuple(t32.shape)} but its error-feedback "
                        f"residual has shape {tuple(res.shape)}"
                    )
                t32 = t32 + res
            corrected[name] = t32
        payload = self.inner.encode(corrected)
        decoded = self.inner.decode(payload, shapes_of(corrected), validate=False)
        for name, t in corrected.items():
            self._residual[name] = t - decoded[name]
        return payload

    def decode(
        self, payload: Mapping[str, np.ndarray], shapes: Mapping[str, Any], *, validate: bool = True
    ) -> Update:
        return self.inner.decode(payload, shapes, validate=validate)

    def expected_layout(self, shapes: Mapping[str, Any]) -> dict[str, ArraySpec]:
        return self.inner.expected_layout(shapes)

    def max_payload_bytes(self, shapes: Mapping[str, Any]) -> int:
        return self.inner.max_payload_bytes(shapes)

    def check_values(self, payload: Mapping[str, np.ndarray], shapes: Shapes) -> None:
        self.inner.check_values(payload, shapes)

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {_RESIDUAL + name: to_numpy(r) for name, r in self._residual.items()}
        state.update({_INNER + key: arr for key, arr in self.inner.state_dict().items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        residual: dict[str, torch.Tensor] = {}
        inner: dict[str, np.ndarray] = {}
        for key, arr in state.items():
            if key.startswith(_RESIDUAL):
                a = np.asarray(arr)
                if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
                    raise ValueError(f"error-feedback state {key!r} must be finite floats")
                residual[key[len(_RESIDUAL) :]] = from_numpy(a.astype(np.float32))
            elif key.startswith(_INNER):
                inner[key[len(_INNER) :]] = arr
            else:
                raise ValueError(f"unexpected error-feedback state key {key!r}")
        self.inner.load_state_dict(inner)
        self._residual = residual
