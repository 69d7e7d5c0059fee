"""``autoencoder``: CG-FedLLM's learned codec. The payload is the latent plus per-tensor scales.

Why per-tensor scales: the decoder ends in tanh, and tensors differ in magnitude. Each tensor
is divided by its RMS times a gain fitted at TGAP (`input_gain`), laid out as one image
(`autoencoders.layout`) and encoded. The scale sent for each tensor (4 bytes) is the one the
receiver multiplies its decoded part by. With `fit_scales` (the default; needs the decoder on
the sender) it is the least-squares gain <x, d> / <d, d> of the decoded part d against the true
x, computed on exactly the latent the server will decode: the reconstruction error of every
tensor is then at most its energy (never worse than sending nothing), which is what error
feedback needs to converge. Without it, the input scale is sent.

Not in the name registry: it needs a trained model, so `methods.cg_fedllm` builds it (and
wraps it in the shared `ErrorFeedback` when asked). A client holding only the encoder can
encode; decoding needs the decoder. Received latents go through `validate_payload` like every
other payload: exact keys, dtypes and shapes, finite values, bounded latents and scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedpress.autoencoders.base import Autoencoder
from fedpress.autoencoders.layout import Layout

from .base import (
    FP16_MAX,
    ArraySpec,
    Codec,
    Payload,
    PayloadError,
    Update,
    check_update,
    from_numpy,
    normalize_shapes,
    spec,
    to_numpy,
    validate_payload,
)

LATENT = "latent"
SCALES = "scales"
MAX_SCALE = 1e4  # no honest adapter change comes near this; a larger scale is hostile
MAX_LATENT = 1e4  # latents of inputs in [-1, 1] stay far below this


class AutoencoderCodec(Codec):
    name = "autoencoder"

    def __init__(
        self,
        model: Autoencoder,
        shapes: Mapping[str, Any],
        input_gain: float,
        latent_dtype: str = "fp16",
        fit_scales: bool = True,
    ) -> None:
        if latent_dtype not in ("fp16", "fp32"):
            raise ValueError(f"latent_dtype must be 'fp16' or 'fp32', got {latent_dtype!r}")
        if not np.isfinite(input_gain) or input_gain <= 0:
            raise ValueError(f"input_gain must be a positive number, got {input_gain!r}")
        self.model = model.eval()
        self.layout = Layout(normalize_shapes(shapes))
        self.input_gain = float(input_gain)
        self.fit_scales = fit_scales
        self.dtype = np.float16 if latent_dtype == "fp16" else np.float32
        self.latent_shape = model.latent_shape(self.layout.height, self.layout.width)

    def __repr__(self) -> str:
        return f"AutoencoderCodec({self.model.arch}, 1/{self.model.compression})"

    def scales_of(self, update: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.layout.rms(update) * self.input_gain

    @torch.no_grad()
    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        check_update(update)
        scales = self.scales_of(update)
        image = self.layout.to_image(update, scales)
        device = next(self.model.parameters()).device
        latent = self.model.encode(image[None, None].to(device))[0].float().cpu()
        if self.dtype == np.float16:
            latent = latent.clamp(-FP16_MAX, FP16_MAX)
        latent = to_numpy(latent).astype(self.dtype)
        if self.fit_scales:
            unit = self._decode_unit(latent)
            fitted = []
            for name in self.layout.names:
                d, x = unit[name].double(), update[name].detach().cpu().double()
                energy = float(d.pow(2).sum())
                fitted.append(float((d * x).sum()) / energy if energy > 0 else 0.0)
            scales = torch.tensor(fitted).clamp(-MAX_SCALE, MAX_SCALE)
        return {LATENT: latent, SCALES: to_numpy(scales.float())}

    def _decode_unit(self, latent: np.ndarray) -> dict[str, torch.Tensor]:
        """Decoded tensors for a latent, before per-tensor scaling (scale 1)."""
        device = next(self.model.parameters()).device
        z = from_numpy(latent).float().to(device)
        image = self.model.decode(z[None])[0].float().cpu()
        image = image.reshape(self.layout.height, self.layout.width)
        return self.layout.from_image(image, torch.ones(len(self.layout.names)))

    def expected_layout(self, shapes: Mapping[str, Any]) -> dict[str, ArraySpec]:
        shapes = normalize_shapes(shapes)
        if shapes != self.layout.shapes:
            raise ValueError("the autoencoder codec was built for other adapter shapes")
        return {
            LATENT: spec(self.dtype, self.latent_shape, low=-MAX_LATENT, high=MAX_LATENT),
            SCALES: spec(np.float32, (len(shapes),), low=-MAX_SCALE, high=MAX_SCALE),
        }

    @torch.no_grad()
    def decode(
        self, payload: Mapping[str, np.ndarray], shapes: Mapping[str, Any], *, validate: bool = True
    ) -> Update:
        shapes = normalize_shapes(shapes)
        if validate:
            validate_payload(self, payload, shapes)
        unit = self._decode_unit(payload[LATENT])
        scales = from_numpy(payload[SCALES]).double().tolist()
        out = {
            n: (unit[n].double() * s).float()
            for n, s in zip(self.layout.names, scales, strict=True)
        }
        for name, t in out.items():
            if not bool(torch.isfinite(t).all()):
                raise PayloadError(f"{self.label} payload for {name!r} decodes to NaN or Inf")
        return out
