"""What a run's messages weigh before it runs (`fedpress plan`): the messages the loop and the
clients send, built as the Flower messages they are, from shapes instead of tensors.

A `PlannedArray` is an `Array` with a dtype and a shape but no data; the records, the message
around it and its metadata are Flower's own objects, so `accounting.message_nbytes` sizes a
planned message the way it sizes a sent one, framing, metrics and Flower's once-only shipping
of identical objects included. Methods build their messages here with the record names and
builders their server and client use (`protocol`, `node.reply`, `handshake.question`).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.app.message import array as flower_array
from flwr.app.message.arraychunk import ArrayChunk
from flwr.app.metadata import Metadata
from flwr.common import DEFAULT_TTL
from flwr.supercore.inflatable.inflatable_object import InflatableObject, add_header_to_object_body

from fedpress.accounting import message_nbytes
from fedpress.config import RunConfig
from fedpress.flower import node, protocol
from fedpress.flower.handshake import question
from fedpress.training import TrainResult

if TYPE_CHECKING:
    from fedpress.codecs import Codec

# Flower draws run and node ids at random: 64-bit run ids, 63-bit node ids (the simulation's
# SuperLink is node 1). Their varints take 10 and 9 bytes for nearly every draw; these are
# typical ones (a run's messages can differ from the plan by a byte or two of metadata).
RUN_ID = 2**63 + 1
NODE_ID = 2**62 + 1
SUPERLINK = 1
# A train reply reports its client's memory (`node.reply`); a typical peak and training
# figure (their varints: 5 and 4 bytes) stand for the values a run measures.
TYPICAL_MEMORY = {"peak": 2**31, "bytes": 2**26}


@dataclass
class Traffic:
    """One round's messages, as `exchange.RoundStats` counts them: the bytes of every message
    sent (`down`) and received (`up`)."""

    down: list[int] = field(default_factory=list)
    up: list[int] = field(default_factory=list)

    def add(self, sent: Message, reply: Message | None = None) -> None:
        self.down.append(message_nbytes(sent))
        if reply is not None:
            self.up.append(message_nbytes(reply))


class Exchanges:
    """Sizes of planned exchanges, each distinct one built and sized once: sizing a 7B model's
    full-parameter message takes seconds, and a 200-round run repeats a few kinds of them."""

    def __init__(self) -> None:
        self.known: dict[Hashable, tuple[int, int]] = {}

    def add(
        self,
        traffic: Traffic,
        key: Hashable,
        sent: Callable[[], Message],
        answer: Callable[[Message], Message] | None,
    ) -> int:
        """Add one exchange to `traffic`: the message `sent()` builds and the reply
        `answer(sent)` builds (None: no reply counted); `key` names what makes it differ
        from the others. The bytes sent."""
        if key not in self.known:
            message = sent()
            replied = answer(message) if answer is not None else None
            self.known[key] = (message_nbytes(message), message_nbytes(replied) if replied else 0)
        down, up = self.known[key]
        traffic.down.append(down)
        if answer is not None:
            traffic.up.append(up)
        return down


def int_bytes(value: int) -> int:
    """How many bytes Flower serialises `value` to in a record (a key of sizes: round 63's
    messages are shorter than round 64's, round 9's as long as round 10's)."""
    from flwr.app import MetricRecord

    return len(MetricRecord({"n": value}).deflate())


class PlannedChunk(InflatableObject):
    """One chunk of a `PlannedArray`: its object id and the bytes it serialises to."""

    def __init__(self, object_id: str, body_bytes: int) -> None:
        self._id = object_id
        self.planned_nbytes = _chunk_header_bytes(body_bytes) + body_bytes

    @property
    def object_id(self) -> str:
        return self._id

    def deflate(self) -> bytes:
        raise TypeError("a planned chunk has a size, not bytes")


class _NoData:
    """The `data` of a planned array: a length (what `ArrayRecord.count_bytes` reads)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __len__(self) -> int:
        return self.nbytes


class PlannedArray(Array):
    """What Flower ships for a numpy array of `dtype` and `shape`, without the array.

    Flower ships identical objects once, so what the array holds matters: `fill`, every
    element that number (LoRA's zero B, an all-zero change); or `content`, a name for what it
    holds (arrays of equal content ship once; None: content no other array has).
    """

    def __init__(
        self,
        dtype: str,
        shape: tuple[int, ...],
        *,
        fill: float | None = None,
        content: Hashable = None,
    ) -> None:
        dtype = str(np.dtype(dtype))
        shape = tuple(int(d) for d in shape)
        header = _npy_header_bytes(dtype, shape)
        count = int(np.prod(shape, dtype=np.int64))
        total = header + count * np.dtype(dtype).itemsize
        fill = 0 if count == 0 else fill  # an empty array is like every other of its kind
        super().__init__(dtype=dtype, shape=shape, stype=flower_array.SType.NUMPY, data=b"")
        self.data = _NoData(total)  # type: ignore[assignment]
        pattern = None if fill is None else np.array(fill, dtype=dtype).tobytes()
        named = ("fill", pattern) if pattern else (id(self) if content is None else content)
        token = repr((named, dtype, shape))
        size = flower_array.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
        chunks = []
        for index, start in enumerate(range(0, total, size)):
            length = min(size, total - start)
            # Past the npy header (64-byte aligned) the chunks of a constant array are alike.
            key = repr((pattern, length)) if pattern and start >= header else f"{token}/{index}"
            object_id = hashlib.sha256(key.encode()).hexdigest()
            chunks.append((object_id, PlannedChunk(object_id, length)))
        self.__dict__["_planned_chunks"] = chunks

    def slice_array(self) -> list[tuple[str, InflatableObject]]:
        return self.__dict__["_planned_chunks"]


# Flower's object header names the object's class: a planned array serialises as an `Array`.
PlannedArray.__qualname__ = Array.__qualname__


@cache
def _npy_header_bytes(dtype: str, shape: tuple[int, ...]) -> int:
    """The length of the header `np.save` (how `Array` serialises an array) writes."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": shape,
    }
    out = BytesIO()
    np.lib.format.write_array_header_1_0(out, header)
    return out.tell()


@cache
def _chunk_header_bytes(body_bytes: int) -> int:
    """Flower's object header of an `ArrayChunk` whose body is `body_bytes` long."""
    empty = len(add_header_to_object_body(memoryview(b""), ArrayChunk(memoryview(b""))))
    return empty - len("0") + len(str(body_bytes))


# --------------------------------------------------------------------------- records


def arrays_record(arrays: Mapping[str, PlannedArray]) -> ArrayRecord:
    """An ArrayRecord of planned arrays (`ArrayRecord(dict)` would copy them into plain ones)."""
    record = ArrayRecord()
    for name, array in arrays.items():
        record[name] = array
    return record


def tensors_record(
    shapes: Mapping[str, tuple[int, ...]],
    fills: Mapping[str, float] | None = None,
    content: Hashable = None,
) -> ArrayRecord:
    """What `protocol.tensors_to_record` sends for fp32 tensors of these shapes: those named
    in `fills` constant, the others of `content` (None: unlike anything else)."""
    fills = fills or {}
    return arrays_record(
        {
            name: PlannedArray(
                "float32",
                shape,
                fill=fills.get(name),
                content=None if content is None else (content, name),
            )
            for name, shape in shapes.items()
        }
    )


def payload_record(
    codec: Codec, shapes: Mapping[str, tuple[int, ...]], zero: bool = False
) -> ArrayRecord:
    """What `protocol.encode_record` sends for an update of these shapes: one packed array of
    the codec's exact payload size; `zero`: the update is all zeros (a first round's change),
    whose packed bytes are constant for the codecs that encode zeros as zeros."""
    nbytes = codec.max_payload_bytes(shapes)
    fill = _zero_byte(codec) if zero else None
    return arrays_record({protocol.PACKED: PlannedArray("uint8", (nbytes,), fill=fill)})


def _zero_byte(codec: Codec) -> int | None:
    """The byte every byte of this codec's payload of zeros is, or None when they differ
    (asked of the codec itself, on a small all-zero update)."""
    import copy

    import torch

    from fedpress.codecs import pack_payload

    probe = copy.deepcopy(codec)
    shapes = {"probe": (64, 64)}
    packed = pack_payload(probe, probe.encode({"probe": torch.zeros(64, 64)}), shapes)
    return int(packed[0]) if packed.size and bool((packed == packed[0]).all()) else None


# --------------------------------------------------------------------------- messages


def instruction(content: RecordDict, message_type: str = MessageType.TRAIN) -> Message:
    """A message from the server as the loop sizes it (before the grid sends it)."""
    metadata = Metadata(
        run_id=RUN_ID,
        message_id="",
        src_node_id=SUPERLINK,
        dst_node_id=NODE_ID,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=message_type,
        src_task_id=1,
    )
    return Message(content, metadata=metadata)


def reply(content: RecordDict, to: Message) -> Message:
    """A node's reply to `to` as the server receives it (ids and delivery time set)."""
    to.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # what the grid gives a sent one
    answer = Message(content, reply_to=to)
    answer.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    answer.metadata.delivered_at = datetime.now(UTC).isoformat()
    return answer


def train_reply(
    to: Message,
    update: ArrayRecord,
    config: RunConfig,
    partition: int = 0,
    **extra: int | float,
) -> Message:
    """A train reply (`node.reply`, what every method's client sends) carrying `update`, with
    the metrics of a turn of `train.local_steps` full batches."""
    steps = config.train.local_steps
    result = TrainResult(1.0, steps, steps * config.train.batch_size, 1.0)
    answered = node.reply(to, update, result, TYPICAL_MEMORY, 1.0, partition, **extra)
    return reply(answered.content, to)


def handshake(config: RunConfig) -> Traffic:
    """The connection (round 0): the run config to every node, and each node's answer."""
    traffic = Traffic()
    text = config.to_json()
    for slot in range(config.num_clients):
        sent = instruction(question(text, slot), MessageType.QUERY)
        traffic.add(sent, reply(node.node_info(slot, config.num_clients, False), sent))
    return traffic
