"""Shared interface of the update codecs, and the receiver-side payload validator.

Why one interface: every method sends tensors both ways, so any compressor can be swapped in by
name. Why a validator: the receiver trusts only the shapes it already knows; each codec declares
the exact layout it produces for those shapes, so a malformed or hostile payload is rejected with
a one-line reason before it touches the model.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    import torch
else:
    from ._torch import torch

Update = dict[str, "torch.Tensor"]
Payload = dict[str, np.ndarray]
Shapes = dict[str, tuple[int, ...]]
"""What the receiver expects: parameter name -> shape. It never trusts shapes from the wire."""

FP16_MAX = float(np.finfo(np.float16).max)
BF16_MAX = 3.3895313892515355e38  # torch.finfo(torch.bfloat16).max
_MAX_LISTED = 3  # how many offending keys an error message names


class PayloadError(ValueError):
    """A received payload is not what the codec produces for the expected shapes."""


@dataclass(frozen=True)
class ArraySpec:
    """One payload array as the codec produces it.

    Floating arrays (and ``bf16`` uint16 arrays) must be finite. ``low``/``high`` are inclusive
    value bounds; ``increasing`` requires strictly increasing values (top-k indices).
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    bf16: bool = False
    low: float | None = None
    high: float | None = None
    increasing: bool = False

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def spec(
    dtype: type | str,
    shape: tuple[int, ...],
    *,
    bf16: bool = False,
    low: float | None = None,
    high: float | None = None,
    increasing: bool = False,
) -> ArraySpec:
    """Shorthand for an :class:`ArraySpec` with a native-byte-order dtype."""
    return ArraySpec(np.dtype(dtype), tuple(shape), bf16, low, high, increasing)


def payload_key(name: str, field: str) -> str:
    """Flat payload key of one field of one parameter tensor."""
    return f"{name}/{field}"


def payload_nbytes(payload: Mapping[str, np.ndarray]) -> int:
    """Bytes of array data in a payload (framing such as Flower's ~128 B per array excluded)."""
    return int(sum(np.asarray(arr).nbytes for arr in payload.values()))


def shapes_of(update: Mapping[str, torch.Tensor]) -> Shapes:
    """The :data:`Shapes` of an update (what a receiver would pass to ``decode``)."""
    return {name: tuple(int(d) for d in t.shape) for name, t in update.items()}


def normalize_shapes(shapes: Mapping[str, Any]) -> Shapes:
    """Check the receiver's shapes (a programming error if bad: ``ValueError``)."""
    if not isinstance(shapes, Mapping):
        raise ValueError(f"shapes must be a mapping name -> shape, got {type(shapes).__name__}")
    out: Shapes = {}
    for name, shape in shapes.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"shape names must be non-empty strings, got {name!r}")
        try:
            dims = tuple(shape)
        except TypeError:
            raise ValueError(f"shape of {name!r} must be a tuple of ints, got {shape!r}") from None
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
            raise ValueError(f"shape of {name!r} must be a tuple of ints, got {shape!r}")
        if any(d < 0 for d in dims):
            raise ValueError(f"shape of {name!r} has a negative dimension: {shape!r}")
        out[name] = tuple(int(d) for d in dims)
    return out


def check_update(update: Mapping[str, torch.Tensor]) -> None:
    """Sender-side check: str names -> finite floating tensors (``ValueError`` otherwise)."""
    if not isinstance(update, Mapping):
        raise ValueError(f"an update must be a dict name -> tensor, got {type(update).__name__}")
    for name, t in update.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"update names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            what = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"update {name!r} must be a floating-point tensor, got {what}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"update {name!r} has NaN or Inf values; refusing to encode it")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy (never shares memory with the caller's tensor)."""
    return t.detach().cpu().contiguous().numpy().copy()


def from_numpy(arr: np.ndarray) -> torch.Tensor:
    """A torch copy of a (possibly read-only, non-contiguous) array."""
    return torch.from_numpy(np.array(arr, copy=True, order="C"))


def close_match_hint(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' when a choice is close to ``word``, else ''."""
    match = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# --------------------------------------------------------------------------- options


def check_int(codec: str, field: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{codec} option {field} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{codec} option {field} must be {bound}, got {value}")
    return int(value)


def check_bool(codec: str, field: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{codec} option {field} must be true or false, got {value!r}")
    return bool(value)


def make_options(options_type: type, codec: str, options: Mapping[str, Any]) -> Any:
    """Build a codec's options dataclass; unknown names -> ``ValueError`` listing the valid ones."""
    valid = [f.name for f in dataclasses.fields(options_type)]
    for key in options:
        if key not in valid:
            listed = ", ".join(valid) if valid else "(none)"
            raise ValueError(
                f"unknown option {key!r} for codec {codec!r}{close_match_hint(key, valid)}; "
                f"valid options: {listed}"
            )
    return options_type(**options)


@dataclass(frozen=True)
class NoOptions:
    """Options of a codec that has none."""


# --------------------------------------------------------------------------- codecs


class Codec(ABC):
    """Turns an update into a payload (``encode``) and back (``decode``, float32 out)."""

    name: ClassVar[str]

    @property
    def label(self) -> str:
        """Human-readable name used in messages (the wrapper adds ``+ef``)."""
        return self.name

    @abstractmethod
    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        """Compress an update (str -> finite float tensor) into a payload."""

    @abstractmethod
    def decode(
        self, payload: Mapping[str, np.ndarray], shapes: Mapping[str, Any], *, validate: bool = True
    ) -> Update:
        """Payload -> float32 tensors of exactly ``shapes``; validates first unless told not to.

        Raises :class:`PayloadError` for a payload this codec would not have produced, or whose
        decoded values are not finite.
        """

    @abstractmethod
    def expected_layout(self, shapes: Mapping[str, Any]) -> dict[str, ArraySpec]:
        """Exact payload layout (key -> dtype, shape, value rules) produced for ``shapes``."""

    def max_payload_bytes(self, shapes: Mapping[str, Any]) -> int:
        """Upper bound of ``payload_nbytes(encode(u))`` for updates of these shapes (exact here)."""
        return sum(s.nbytes for s in self.expected_layout(shapes).values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Sender-side state to persist between rounds (e.g. in Flower's ``Context.state``)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"codec {self.label!r} has no state, got keys {sorted(state)[:3]}")

    def check_values(self, payload: Mapping[str, np.ndarray], shapes: Shapes) -> None:
        """Codec-specific value checks beyond :class:`ArraySpec` (raise :class:`PayloadError`)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TensorwiseCodec(Codec):
    """A codec that handles each tensor on its own; subclasses implement the per-tensor hooks."""

    Options: ClassVar[type] = NoOptions
    options: Any

    def __init__(self, **options: Any) -> None:
        self.options = make_options(self.Options, self.name, options)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={getattr(self.options, f.name)!r}" for f in dataclasses.fields(self.options)
        )
        return f"{type(self).__name__}({fields})"

    # hooks -----------------------------------------------------------------------------
    @abstractmethod
    def tensor_layout(self, shape: tuple[int, ...]) -> dict[str, ArraySpec]:
        """field -> spec of one tensor of ``shape``."""

    @abstractmethod
    def encode_tensor(self, name: str, flat: torch.Tensor, shape: tuple[int, ...]) -> Payload:
        """field -> array for one tensor; ``flat`` is a 1-D float32 CPU tensor (may alias input)."""

    @abstractmethod
    def decode_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> torch.Tensor:
        """float32 tensor with ``prod(shape)`` elements (any shape) from one tensor's fields."""

    def check_tensor(
        self, name: str, fields: Mapping[str, np.ndarray], shape: tuple[int, ...]
    ) -> str | None:
        """Extra per-tensor value check; return a problem description or None."""
        return None

    # interface -------------------------------------------------------------------------
    def expected_layout(self, shapes: Mapping[str, Any]) -> dict[str, ArraySpec]:
        layout: dict[str, ArraySpec] = {}
        for name, shape in normalize_shapes(shapes).items():
            for field, s in self.tensor_layout(shape).items():
                key = payload_key(name, field)
                if key in layout:
                    raise ValueError(f"parameter names collide in payload key {key!r}")
                layout[key] = s
        return layout

    def _fields(
        self, payload: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]
    ) -> dict[str, np.ndarray]:
        return {f: payload[payload_key(name, f)] for f in self.tensor_layout(shape)}

    def check_values(self, payload: Mapping[str, np.ndarray], shapes: Shapes) -> None:
        for name, shape in shapes.items():
            problem = self.check_tensor(name, self._fields(payload, name, shape), shape)
            if problem:
                raise PayloadError(f"{self.label} payload for {name!r}: {problem}")

    def encode(self, update: Mapping[str, torch.Tensor]) -> Payload:
        check_update(update)
        payload: Payload = {}
        for name, t in update.items():
            flat = t.detach().to(device="cpu", dtype=torch.float32).reshape(-1)
            shape = tuple(int(d) for d in t.shape)
            for field, arr in self.encode_tensor(name, flat, shape).items():
                payload[payload_key(name, field)] = arr
        return payload

    def decode(
        self, payload: Mapping[str, np.ndarray], shapes: Mapping[str, Any], *, validate: bool = True
    ) -> Update:
        shapes = normalize_shapes(shapes)
        if validate:
            validate_payload(self, payload, shapes)
        out: Update = {}
        for name, shape in shapes.items():
            t = self.decode_tensor(name, self._fields(payload, name, shape), shape)
            t = t.to(torch.float32).reshape(shape)
            if not bool(torch.isfinite(t).all()):
                raise PayloadError(f"{self.label} payload for {name!r} decodes to NaN or Inf")
            out[name] = t
        return out


# --------------------------------------------------------------------------- validation


def _bf16_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _check_array(key: str, arr: np.ndarray, s: ArraySpec) -> None:
    if arr.size == 0:
        return
    values = arr
    if np.issubdtype(arr.dtype, np.floating) or s.bf16:
        values = _bf16_to_float(arr) if s.bf16 else arr
        if np.isnan(values).any():
            raise PayloadError(f"payload array {key!r} contains NaN")
        if np.isinf(values).any():
            raise PayloadError(f"payload array {key!r} contains Inf")
    if s.low is not None:
        lo = values.min()
        if lo < s.low:
            raise PayloadError(f"payload array {key!r} has value {lo} below the minimum {s.low}")
    if s.high is not None:
        hi = values.max()
        if hi > s.high:
            raise PayloadError(f"payload array {key!r} has value {hi} above the maximum {s.high}")
    if s.increasing and arr.size > 1 and not bool((np.diff(values.astype(np.int64)) > 0).all()):
        raise PayloadError(f"payload array {key!r} is not strictly increasing")


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(repr(k) for k in keys[:_MAX_LISTED]) + more


def validate_payload(
    codec: Codec, payload: Mapping[str, np.ndarray], shapes: Mapping[str, Any]
) -> None:
    """Raise :class:`PayloadError` unless ``payload`` is exactly what ``codec`` produces.

    Order: types, total size (so an oversized payload is rejected before it is scanned), keys,
    dtypes, shapes, values (NaN/Inf, ranges, index order, codec-specific checks).
    """
    shapes = normalize_shapes(shapes)
    if not isinstance(payload, Mapping):
        raise PayloadError(f"payload must be a dict of numpy arrays, got {type(payload).__name__}")
    for key, arr in payload.items():
        if not isinstance(key, str):
            raise PayloadError(f"payload keys must be strings, got {key!r}")
        if not isinstance(arr, np.ndarray):
            raise PayloadError(
                f"payload entry {key!r} is a {type(arr).__name__}, not a numpy array"
            )
    limit = codec.max_payload_bytes(shapes)
    total = payload_nbytes(payload)
    if total > limit:
        raise PayloadError(
            f"payload has {total} bytes, more than the {limit} bytes {codec.label} produces "
            f"for these {len(shapes)} tensors"
        )
    layout = codec.expected_layout(shapes)
    missing = [k for k in layout if k not in payload]
    unexpected = [k for k in payload if k not in layout]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listed(unexpected)}")
        raise PayloadError(f"{codec.label} payload has " + "; ".join(parts))
    for key, s in layout.items():
        arr = payload[key]
        if arr.dtype != s.dtype:
            raise PayloadError(f"payload array {key!r} has dtype {arr.dtype}, expected {s.dtype}")
        if arr.shape != s.shape:
            raise PayloadError(f"payload array {key!r} has shape {arr.shape}, expected {s.shape}")
    for key, s in layout.items():
        _check_array(key, payload[key], s)
    codec.check_values(payload, shapes)


# --------------------------------------------------------------------------- wire packing


def pack_payload(
    codec: Codec, payload: Mapping[str, np.ndarray], shapes: Mapping[str, Any]
) -> np.ndarray:
    """Concatenate a payload into one little-endian uint8 array (keys in sorted order).

    Optional: a Flower ``Array`` adds ~128 bytes of framing per array, which matters for tiny
    per-tensor arrays (top-k on 240 LoRA tensors); one packed array pays it once. The receiver
    splits it with :func:`unpack_payload` using the layout of the shapes it expects.
    """
    layout = codec.expected_layout(shapes)
    if set(layout) != set(payload):
        raise ValueError(f"payload keys do not match the {codec.label} layout for these shapes")
    parts = []
    for key in sorted(layout):
        le = layout[key].dtype.newbyteorder("<")
        parts.append(np.ascontiguousarray(payload[key], dtype=le).reshape(-1).view(np.uint8))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)


def unpack_payload(codec: Codec, packed: np.ndarray, shapes: Mapping[str, Any]) -> Payload:
    """Inverse of :func:`pack_payload`; the result still goes through ``decode``'s validation."""
    layout = codec.expected_layout(shapes)
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
        raise PayloadError("a packed payload must be a 1-D uint8 numpy array")
    expected = sum(s.nbytes for s in layout.values())
    if packed.size != expected:
        raise PayloadError(
            f"packed {codec.label} payload has {packed.size} bytes, expected {expected}"
        )
    out: Payload = {}
    offset = 0
    for key in sorted(layout):
        s = layout[key]
        chunk = packed[offset : offset + s.nbytes]
        offset += s.nbytes
        out[key] = chunk.view(s.dtype.newbyteorder("<")).astype(s.dtype).reshape(s.shape)
    return out


def set_rng_state(gen: torch.Generator, state: np.ndarray, codec: str) -> None:
    """Restore a generator from ``to_numpy(gen.get_state())``; ``ValueError`` if malformed."""
    arr = np.asarray(state)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"{codec} state 'rng_state' must be a 1-D uint8 array")
    try:
        gen.set_state(from_numpy(arr))
    except RuntimeError as exc:
        raise ValueError(f"{codec} state 'rng_state' is not a generator state: {exc}") from None
