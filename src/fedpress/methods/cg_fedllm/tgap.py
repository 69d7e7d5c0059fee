"""TGAP (Temporal-ensemble Gradient-Aware Pre-training), federated honestly: CG-FedLLM's phase
before FAF.

1. The server sends every client a TGAP instruction (a Flower TRAIN message, phase "tgap").
2. Each client trains LoRA on its D1 share (`data.holdout_fraction`), uncompressed, starting
   from the seeded initial adapter, and records its adapter *change* every `snapshot_steps`
   steps (the same quantity FAF encodes: the change over one round's worth of local steps),
   `snapshots` times. Its reply carries the snapshots as fp16 payloads (the `fp16` codec), so
   the bytes they cost are counted by `message_nbytes` like every other message.
3. The server pools the snapshots of all clients (the temporal ensemble), holds out a
   validation part, fits the input gain, trains the autoencoder on random crops, reports
   reconstruction MSE, cosine similarity and SNR (per-element means) on the validation part,
   and saves `autoencoder.safetensors` + `autoencoder.json` + `tgap_curve.png`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from fedpress.accounting import message_nbytes
from fedpress.autoencoders import Autoencoder
from fedpress.autoencoders.training import (
    META,
    SNAPSHOT_FILE,
    save_snapshots,
    train_autoencoder,
)
from fedpress.codecs import PayloadError, build_codec, pack_payload, unpack_payload
from fedpress.config import RunConfig
from fedpress.flower import node, protocol
from fedpress.methods.cg_fedllm.settings import TGAP_PHASE
from fedpress.task import LoraTask, build_task
from fedpress.training import Encoded

log = logging.getLogger("fedpress")

SNAPSHOTS = "tgap-snapshots"
TGAP_METRICS = "tgap-metrics"
TGAP_MESSAGE = f"{MessageType.TRAIN}.{TGAP_PHASE}"


# --------------------------------------------------------------------------- client side


def snapshot_steps(config: RunConfig) -> int:
    return config.autoencoder.snapshot_steps or config.train.local_steps


def record_snapshots(
    task: LoraTask, data: list[Encoded], partition_id: int
) -> tuple[list[dict[str, torch.Tensor]], float]:
    """Train on this client's D1 share; the adapter change of every `snapshot_steps` steps."""
    config: RunConfig = task.config
    if not data:
        raise ValueError(
            "this node has no D1 (holdout) examples for TGAP: data.holdout_fraction is 0 or its "
            "data too small"
        )
    task.set_adapter(task.initial_adapter)
    steps = snapshot_steps(config)
    snapshots, losses = [], []
    for index in range(config.autoencoder.snapshots):
        before = task.adapter()
        result = task.train_round(
            data, index + 1, steps=steps, seed=config.seed * 7_919 + index * 101 + partition_id
        )
        after = task.adapter()
        snapshots.append({name: after[name] - before[name] for name in after})
        losses.append(result.mean_loss)
    return snapshots, sum(losses) / len(losses)


def client_tgap(msg: Message, context: Context, config: RunConfig) -> Message:
    """ClientApp handler of the TGAP instruction: this node's D1 snapshots, fp16."""
    task = build_task(config)
    partition_id = node.partition_id(context, config)
    started = time.perf_counter()
    snapshots, loss = record_snapshots(task, node.holdout(context, config, task), partition_id)
    codec = build_codec("fp16")
    shapes = task.adapter_shapes()
    record = ArrayRecord(
        {
            f"{i:05d}": Array(pack_payload(codec, codec.encode(snap), shapes))
            for i, snap in enumerate(snapshots)
        }
    )
    seconds = time.perf_counter() - started
    return Message(tgap_reply(record, loss, seconds, partition_id), reply_to=msg)


def tgap_reply(record: ArrayRecord, loss: float, seconds: float, partition: int) -> RecordDict:
    """A TGAP reply's content: the snapshots (one packed fp16 payload each) and metrics."""
    metrics = {
        "num-snapshots": len(record),
        "train-loss": loss,
        "train-s": seconds,
        "partition-id": partition,
    }
    return RecordDict({SNAPSHOTS: record, TGAP_METRICS: MetricRecord(metrics)})


# --------------------------------------------------------------------------- server side


@dataclass
class TgapResult:
    model: Autoencoder
    meta: dict
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    client_train_s: float = 0.0
    clients_ok: int = 0


def read_snapshots(reply: Message, shapes, config: RunConfig) -> list[dict[str, torch.Tensor]]:  # noqa: ANN001
    """Validate one client's TGAP reply (PayloadError for anything a client could not send)."""
    content = reply.content
    if SNAPSHOTS not in content.array_records:
        raise PayloadError(f"TGAP reply has no '{SNAPSHOTS}' record")
    record = content.array_records[SNAPSHOTS]
    if not 1 <= len(record) <= config.autoencoder.snapshots:
        raise PayloadError(f"TGAP reply has {len(record)} snapshots")
    codec = build_codec("fp16")
    limit = codec.max_payload_bytes(shapes)
    out = []
    for key in sorted(record):
        array = record[key]
        if array.dtype != "uint8" or len(array.shape) != 1 or array.shape[0] != limit:
            raise PayloadError(f"snapshot {key!r} is {array.dtype}{tuple(array.shape)}")
        out.append(codec.decode(unpack_payload(codec, array.numpy(), shapes), shapes))
    return out


def collect_snapshots(grid, config: RunConfig, partitions: dict[int, int], shapes) -> tuple:  # noqa: ANN001
    """Ask every client for its D1 snapshots; returns (snapshots, bytes_up, bytes_down, s)."""
    messages = [
        Message(content=protocol.train_content({}, 0), message_type=TGAP_MESSAGE, dst_node_id=n)
        for n in sorted(partitions)
    ]
    bytes_down = [message_nbytes(m) for m in messages]
    bytes_up, pooled, client_s = [], [], 0.0
    replies = grid.send_and_receive(messages, timeout=config.federation.round_timeout_s)
    for reply in sorted(replies, key=lambda r: partitions.get(r.metadata.src_node_id, -1)):
        bytes_up.append(message_nbytes(reply))
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("TGAP: client on node %d failed: %s", node_id, reply.error.reason)
            continue
        try:
            pooled.extend(read_snapshots(reply, shapes, config))
        except (PayloadError, ValueError) as exc:
            log.warning("TGAP: rejected reply from node %d: %s", node_id, exc)
            continue
        metrics = reply.content.metric_records.get(TGAP_METRICS, {})
        client_s += float(metrics.get("train-s", 0.0))
    return pooled, bytes_up, bytes_down, client_s


def run_tgap_phase(
    grid: Grid,
    config: RunConfig,
    partitions: dict[int, int],
    task,
    out_dir: Path,  # noqa: ANN001
) -> TgapResult:
    """The whole TGAP phase inside the ServerApp: collect snapshots, train, save."""
    shapes = task.adapter_shapes()
    pooled, bytes_up, bytes_down, client_s = collect_snapshots(grid, config, partitions, shapes)
    log.info("TGAP: %d snapshots from %d replies", len(pooled), len(bytes_up))
    folder = Path(out_dir) / "autoencoder"
    collection = {
        "tgap_bytes_up": sum(bytes_up),
        "tgap_bytes_down": sum(bytes_down),
        "tgap_client_train_s": client_s,
        "tgap_snapshots": len(pooled),
    }
    save_snapshots(folder / SNAPSHOT_FILE, pooled, collection)
    model, meta = train_autoencoder(pooled, shapes, config.autoencoder, config.seed, folder)
    meta.update(collection)
    (folder / META).write_text(json.dumps(meta, indent=2))
    val = meta["validation"]
    log.warning(
        "TGAP %s: validation cos %.3f, SNR %.2f dB, MSE %.3g",
        config.autoencoder.arch,
        val["cosine"],
        val["snr_db"],
        val["mse"],
    )
    return TgapResult(model, meta, bytes_up, bytes_down, client_s, len(pooled))


def run_tgap_only(grid: Grid, config: RunConfig, out_dir: Path) -> dict:
    """ServerApp entry of `fedpress tgap`: connect the nodes, then the TGAP phase alone."""
    from fedpress.flower.exchange import RoundStats
    from fedpress.flower.handshake import connect
    from fedpress.flower.progress import ProgressGrid

    grid = ProgressGrid(grid, "exchange")
    nodes = connect(grid, config, RoundStats(), config)
    return run_tgap_phase(grid, config, nodes.partitions, build_task(config), out_dir).meta
