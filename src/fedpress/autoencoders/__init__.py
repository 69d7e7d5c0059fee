"""Learned update autoencoders for CG-FedLLM (SPEC section 1; docs/cg_fedllm.md).

`build_autoencoder(arch, compression)` creates one by name; all share `base.Autoencoder`'s
interface, so the codec (`fedpress.codecs.autoencoder`) and TGAP (`tgap.py`) never depend on
the architecture. `layout.Layout` maps adapter updates onto the autoencoder's input image.
"""

from __future__ import annotations

from fedpress.autoencoders.base import Autoencoder
from fedpress.autoencoders.cnn1d import CNN1D
from fedpress.autoencoders.layout import Layout
from fedpress.autoencoders.resnet3 import ResNet3
from fedpress.autoencoders.rowlinear import RowLinear
from fedpress.autoencoders.uformer import UFormer

ARCHS = ("resnet3", "cnn1d", "uformer0", "uformer1", "uformer2", "rowlinear")


def build_autoencoder(arch: str, compression: int, width: int = 0) -> Autoencoder:
    """`width`: the layout's image width (only `rowlinear` depends on it)."""
    if arch == "rowlinear":
        return RowLinear(compression, width)
    if arch == "resnet3":
        return ResNet3(compression)
    if arch == "cnn1d":
        return CNN1D(compression)
    if arch in ("uformer0", "uformer1", "uformer2"):
        return UFormer(compression, blocks=int(arch[-1]))
    raise ValueError(f"unknown autoencoder architecture {arch!r}; valid: {', '.join(ARCHS)}")


__all__ = ["ARCHS", "Autoencoder", "Layout", "build_autoencoder"]
