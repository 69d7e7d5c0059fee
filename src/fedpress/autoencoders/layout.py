"""Map an adapter update (dict of LoRA A/B tensors) onto one single-channel 2-D image and back.

Why one image: SPEC lays all LoRA factors of the model out as one 1 x H x W array, so one
autoencoder pass compresses the whole update and the convolutions share weights across it.

Layout (documented in docs/cg_fedllm.md): *rank-vector tiles*.
- Every tensor is read as a stack of vectors: LoRA A (r x in) as its r rows, LoRA B (out x r)
  as its r columns (B transposed), other 2-D tensors by rows, anything else as one vector.
  Per-round LoRA changes are expected to be close to rank one (a few steps from a shared
  start; not measured by a shipped command), so the r vectors of one factor are near-copies
  of one another up to scale. Stacking them in *consecutive image rows, column-aligned* puts
  that redundancy where a 2-D convolution sees it (vertically), instead of smearing it along
  one wrapped stream.
- Image width W = 64 * ceil(longest vector / 64) (at most 4096; longer vectors wrap over
  several rows). Vectors shorter than W/2 share a row (k = W // length side by side, the next
  k in the row below). Tensors follow each other in sorted name order; H is padded to a
  multiple of 64 (the six stride-2 stages). Unused cells are zero.
- SmolLM2-135M LoRA r=8 on q,k,v,o: W = 576; per layer 6 tensors x 8 rows + 2 (k, v B:
  8 vectors of 192, 3 per row) x 3 rows = 54 rows; 30 layers = 1620 rows -> H = 1664:
  958,464 cells for 921,600 numbers (4.0 % padding).
- Each tensor is divided by its own scale (per-tensor RMS x a gain fitted at TGAP) and clamped
  to [-1, 1], the range of the decoder's tanh; the scales travel beside the latent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

ALIGN = 64  # 2**6: six stride-2 down-sampling stages
MAX_WIDTH = 4096


def _is_lora_b(name: str) -> bool:
    return "lora_B" in name


def _vectors(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """(count, length) of the vectors a tensor is read as."""
    if len(shape) == 2:
        return (shape[1], shape[0]) if _is_lora_b(name) else (shape[0], shape[1])
    return 1, math.prod(shape)


class Layout:
    """Fixed, receiver-known mapping between an update of `shapes` and an H x W image."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        if not shapes:
            raise ValueError("an adapter layout needs at least one tensor")
        self.shapes = {name: tuple(int(d) for d in shapes[name]) for name in sorted(shapes)}
        self.sizes = {name: math.prod(shape) for name, shape in self.shapes.items()}
        self.numel = sum(self.sizes.values())
        if self.numel == 0:
            raise ValueError("an adapter layout needs at least one number")
        longest = max(_vectors(n, s)[1] for n, s in self.shapes.items())
        width = min(ALIGN * math.ceil(longest / ALIGN), MAX_WIDTH)
        self.positions: dict[str, torch.Tensor] = {}
        row = 0
        for name, shape in self.shapes.items():
            count, length = _vectors(name, shape)
            j = torch.arange(count).repeat_interleave(length)  # vector of each stream element
            p = torch.arange(length).repeat(count)  # position inside its vector
            if length <= width:
                per_row = width // length
                rows = j // per_row
                cols = (j % per_row) * length + p
                used = math.ceil(count / per_row)
            else:
                padded = math.ceil(length / width) * width
                q = j * padded + p
                rows, cols = q // width, q % width
                used = count * padded // width
            self.positions[name] = (row + rows) * width + cols
            row += used
        self.height, self.width = ALIGN * math.ceil(row / ALIGN), width

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
        image = torch.zeros(self.height * self.width)
        for name, scale in zip(self.names, scales.tolist(), strict=True):
            if scale > 0:
                flat = self._stream(name, update[name])
                image[self.positions[name]] = (flat / scale).clamp(-1.0, 1.0)
        return image.reshape(self.height, self.width)

    def from_image(self, image: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of `to_image` (up to the clamp): float32 tensors of exactly `shapes`."""
        if tuple(image.shape) != (self.height, self.width):
            raise ValueError(f"image is {tuple(image.shape)}, layout is {self.height}x{self.width}")
        flat = image.reshape(-1).float()
        return {
            name: self._unstream(name, flat[self.positions[name]] * scale)
            for name, scale in zip(self.names, scales.tolist(), strict=True)
        }
