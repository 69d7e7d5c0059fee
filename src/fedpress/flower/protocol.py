"""What travels between server and clients: record names, tensor records, codec payloads.

Keeping the message layout in one place makes the contract between ServerApp and ClientApp
explicit and lets the server validate every reply against it. A codec payload travels as one
packed uint8 array (Flower adds ~128 bytes of framing per array; LoRA has hundreds of small
tensors), and the receiver unpacks it with the layout of the shapes it already knows.

torch and the codecs are imported by the functions that use them: a deployed node answers the
server's first query in a process of its own (see `fedpress.flower.node`), which then needs
neither.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedpress.errors import FedpressError

if TYPE_CHECKING:
    import torch

    from fedpress.codecs import Codec
    from fedpress.config import CodecConfig
    from fedpress.task import Shapes

# Server -> client (train instruction).
GLOBAL_ADAPTER = "global-adapter"  # the full global adapter (downlink codec "none")
GLOBAL_DELTA = "global-delta"  # or: the encoded change since what this client holds
INSTRUCTIONS = "instructions"
RUN_CONFIG = "run-config"  # the resolved RunConfig as JSON: sent once, with the first query
SLOT = "slot"  # with it: the client number a node without a partition id takes (deployment)
SERVER_ROUND = "server-round"

# Client -> server (query reply): which data partition this node holds.
NODE_INFO = "node-info"

# Server -> client (evaluate instruction) and its reply: federated evaluation.
EVAL_METRICS = "eval-metrics"

# What a deployed server sends nodes in place of a path: a node reads its own data
# (`data-path` in its node config) and never opens a file the server named.
NODE_LOCAL = "node-local"
SERVER_ONLY = "server-only"

# Client -> server (train reply).
UPDATE = "update"
TRAIN_METRICS = "train-metrics"

# Client-side state kept in Flower's Context.state across rounds (with RUN_CONFIG).
UPLINK_CODEC_STATE = "uplink-codec-state"
GLOBAL_VIEW = "global-view"

PACKED = "payload"


def tensors_to_record(tensors: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord(
        {name: Array(t.detach().cpu().contiguous().numpy()) for name, t in tensors.items()}
    )


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def record_to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    import torch

    return {name: torch.from_numpy(np.array(a.numpy(), copy=True)) for name, a in record.items()}


def train_content(records: dict, server_round: int, **instructions: object) -> RecordDict:
    """A train message's content: the method's `records`, and its instructions (the round,
    and what else the method tells its client)."""
    config = ConfigRecord({SERVER_ROUND: server_round, **instructions})
    return RecordDict({**records, INSTRUCTIONS: config})


def make_codec(name: str, options: CodecConfig, *, uplink: bool) -> Codec:
    """A codec from the run config: its `[codec.<name>]` table; error feedback only on the
    uplink (see CodecConfig)."""
    import dataclasses

    from fedpress.codecs import build_codec

    section = options.sections.get(name)
    values = {} if section is None else dataclasses.asdict(section)
    feedback = {"auto": None, "on": True, "off": False}[options.error_feedback] if uplink else False
    try:
        return build_codec(name, error_feedback=feedback, **values)
    except ValueError as exc:
        raise FedpressError(f"codec '{name}': {exc}") from None


def encode_record(codec: Codec, update: dict[str, torch.Tensor], shapes: Shapes) -> ArrayRecord:
    from fedpress.codecs import pack_payload

    payload = codec.encode(update)
    return ArrayRecord({PACKED: Array(pack_payload(codec, payload, shapes))})


def decode_record(codec: Codec, record: ArrayRecord, shapes: Shapes) -> dict[str, torch.Tensor]:
    """Decode a received payload; anything the codec could not have produced is rejected."""
    from fedpress.codecs import PayloadError, unpack_payload

    if list(record.keys()) != [PACKED]:
        raise PayloadError(f"expected one array '{PACKED}', got {sorted(record.keys())[:3]}")
    array = record[PACKED]
    limit = codec.max_payload_bytes(shapes)
    if array.dtype != "uint8" or len(array.shape) != 1 or array.shape[0] > limit:
        raise PayloadError(
            f"payload is {array.dtype}{tuple(array.shape)}, expected at most {limit} uint8 bytes"
        )
    return codec.decode(unpack_payload(codec, array.numpy(), shapes), shapes)


# Flower wraps what a ClientApp raised: "... Exception ClientAppException occurred. Message:
# <the client's message>", inside Ray's own wrapping on the simulation engine.
_CLIENT_MESSAGE = re.compile(r"occurred\. Message: ?(.*)")


def failure_reason(reason: str) -> str:
    """A failed reply's reason in one line: the client's own message out of Flower's and
    Ray's wrapping (the whole of it is in the Flower log with --verbose)."""
    found = _CLIENT_MESSAGE.findall(reason)
    lines = [line.strip() for line in (found[-1:] or reason.splitlines()) if line.strip()]
    line = lines[-1].rstrip("'>\"") if lines else "no reason given"
    return line if len(line) <= 300 else f"{line[:297]}..."
