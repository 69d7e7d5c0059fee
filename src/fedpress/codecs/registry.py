"""Codec names -> classes, and :func:`build_codec`, the one way configs create codecs.

A codec is one module: its class and its frozen ``Options`` dataclass, which is also its config
section (``[codec.topk] fraction = 0.01``, checked when the config loads). Registering it is
adding its class to ``CODECS`` below; codec modules import torch only on first use, so the
config can read every ``Options`` without it.

Error feedback defaults: on for the biased compressors (``topk``, ``powersgd``, ``sign``), whose
dropped part would otherwise be lost for good; off for the others (``none``, ``fp16``, ``bf16``,
``int8``, ``int4``: small rounding error; ``qsgd``: unbiased). ``error_feedback=`` overrides.
"""

from __future__ import annotations

from typing import Any

from .base import Codec, TensorwiseCodec, check_bool, close_match_hint
from .bf16 import BF16Codec
from .error_feedback import ErrorFeedback
from .fp16 import FP16Codec
from .identity import IdentityCodec
from .int4 import Int4Codec
from .int8 import Int8Codec
from .powersgd import PowerSGDCodec
from .qsgd import QSGDCodec
from .sign import SignCodec
from .topk import TopKCodec

CODECS: dict[str, type[TensorwiseCodec]] = {
    cls.name: cls
    for cls in (
        IdentityCodec,
        FP16Codec,
        BF16Codec,
        Int8Codec,
        Int4Codec,
        TopKCodec,
        PowerSGDCodec,
        QSGDCodec,
        SignCodec,
    )
}
CODEC_NAMES: tuple[str, ...] = tuple(CODECS)
ERROR_FEEDBACK_BY_DEFAULT: frozenset[str] = frozenset({"topk", "powersgd", "sign"})


def codec_class(name: str) -> type[TensorwiseCodec]:
    """The class registered under ``name``; ``ValueError`` naming the valid ones otherwise."""
    cls = CODECS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(
            f"unknown codec {name!r}{close_match_hint(str(name), CODEC_NAMES)}; "
            f"valid codecs: {', '.join(CODEC_NAMES)}"
        )
    return cls


def build_codec(name: str, *, error_feedback: bool | None = None, **options: Any) -> Codec:
    """Create codec ``name`` with keyword ``options``, wrapped in :class:`ErrorFeedback` when
    ``error_feedback`` is true (None: the codec's default, see this module's docstring)."""
    cls = codec_class(name)
    codec: Codec = cls(**options)
    if error_feedback is None:
        error_feedback = name in ERROR_FEEDBACK_BY_DEFAULT
    if check_bool(name, "error_feedback", error_feedback):
        codec = ErrorFeedback(codec)
    return codec
