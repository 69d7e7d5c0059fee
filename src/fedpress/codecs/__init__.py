"""Update codecs: compress what clients send (uplink) and what the server sends (downlink).

``build_codec(name, **options)`` creates one by name (``CODEC_NAMES``); every codec turns an update
(``dict[str, torch.Tensor]``) into a payload (``dict[str, numpy.ndarray]``, one Flower
``ArrayRecord``'s worth) and back, and ``validate_payload`` lets the receiver reject anything the
codec would not have produced for the shapes it expects.
"""

from .base import (
    ArraySpec,
    Codec,
    Payload,
    PayloadError,
    Shapes,
    TensorwiseCodec,
    Update,
    pack_payload,
    payload_nbytes,
    shapes_of,
    unpack_payload,
    validate_payload,
)
from .bf16 import BF16Codec
from .error_feedback import ErrorFeedback
from .fp16 import FP16Codec
from .identity import IdentityCodec
from .int4 import Int4Codec
from .int8 import Int8Codec
from .powersgd import PowerSGDCodec
from .qsgd import QSGDCodec
from .registry import CODEC_NAMES, ERROR_FEEDBACK_BY_DEFAULT, build_codec, codec_class
from .sign import SignCodec
from .topk import TopKCodec

__all__ = [
    "CODEC_NAMES",
    "ERROR_FEEDBACK_BY_DEFAULT",
    "ArraySpec",
    "BF16Codec",
    "Codec",
    "ErrorFeedback",
    "FP16Codec",
    "IdentityCodec",
    "Int4Codec",
    "Int8Codec",
    "Payload",
    "PayloadError",
    "PowerSGDCodec",
    "QSGDCodec",
    "Shapes",
    "SignCodec",
    "TensorwiseCodec",
    "TopKCodec",
    "Update",
    "build_codec",
    "codec_class",
    "pack_payload",
    "payload_nbytes",
    "shapes_of",
    "unpack_payload",
    "validate_payload",
]
