"""Map an adapter update (dict of LoRA A/B tensors) onto one single-channel 2-D image and back.

Why one image: SPEC lays all LoRA factors of the model out as one 1 x H x W array, so one
autoencoder pass compresses the whole update and the convolutions share weights across it.

Layout (documented in docs/cg_fedllm.md):
- Tensors in sorted name order. Each is read *rank-major*: LoRA A (r x in) as it is, LoRA B
  (out x r) transposed to (r x out), so every run of the stream is one rank-vector of one
  factor (neighbouring numbers belong to the same direction). Other 2-D tensors row-major.
- Each tensor is divided by its own scale (per-tensor RMS x a gain fitted at TGAP) and clamped to
  [-1, 1], the range of the decoder's tanh; the scales travel beside the latent (4 bytes each).
- The normalised stream is concatenated, zero-padded and wrapped row by row into H x W with W
  and H multiples of 64 (the six stride-2 stages), W = 64 * ceil(sqrt(n) / 64), H the fewest
  rows of 64 that hold n. SmolLM2-135M LoRA r=8 on q,k,v,o: n = 921,600 = 960 x 960, no padding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

ALIGN = 64  # 2**6: six stride-2 down-sampling stages


def _is_lora_b(name: str) -> bool:
    return "lora_B" in name


class Layout:
    """Fixed, receiver-known mapping between an update of `shapes` and an H x W image."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        if not shapes:
            raise ValueError("an adapter layout needs at least one tensor")
        self.shapes = {name: tuple(int(d) for d in shapes[name]) for name in sorted(shapes)}
        self.sizes = {name: math.prod(shape) for name, shape in self.shapes.items()}
        self.numel = sum(self.sizes.values())
        width = ALIGN * math.ceil(math.sqrt(self.numel) / ALIGN)
        height = ALIGN * math.ceil(self.numel / width / ALIGN)
        self.height, self.width = height, width

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    @property
    def padding(self) -> int:
        return self.height * self.width - self.numel

    def _stream(self, name: str, t: torch.Tensor) -> torch.Tensor:
        t = t.detach().to(device="cpu", dtype=torch.float32).reshape(self.shapes[name])
        if t.dim() == 2 and _is_lora_b(name):
            t = t.t()
        return t.reshape(-1)

    def _unstream(self, name: str, flat: torch.Tensor) -> torch.Tensor:
        shape = self.shapes[name]
        if len(shape) == 2 and _is_lora_b(name):
            return flat.reshape(shape[1], shape[0]).t().contiguous()
        return flat.reshape(shape)

    def rms(self, update: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-tensor RMS in layout order."""
        return torch.stack(
            [update[n].detach().float().pow(2).mean().sqrt().cpu() for n in self.names]
        )

    def to_image(self, update: Mapping[str, torch.Tensor], scales: torch.Tensor) -> torch.Tensor:
        """(H, W) image of `update / scales` clamped to [-1, 1] (a zero scale gives zeros)."""
        if set(update) != set(self.shapes):
            raise ValueError("update tensors do not match the layout's shapes")
        parts = []
        for name, scale in zip(self.names, scales.tolist(), strict=True):
            flat = self._stream(name, update[name])
            parts.append((flat / scale).clamp(-1.0, 1.0) if scale > 0 else torch.zeros_like(flat))
        parts.append(torch.zeros(self.padding))
        return torch.cat(parts).reshape(self.height, self.width)

    def from_image(self, image: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of `to_image` (up to the clamp): float32 tensors of exactly `shapes`."""
        if tuple(image.shape) != (self.height, self.width):
            raise ValueError(f"image is {tuple(image.shape)}, layout is {self.height}x{self.width}")
        flat = image.reshape(-1).float()
        out, offset = {}, 0
        for name, scale in zip(self.names, scales.tolist(), strict=True):
            size = self.sizes[name]
            out[name] = self._unstream(name, flat[offset : offset + size] * scale)
            offset += size
        return out
