"""What every client does whatever its method: know the run, its partition, its data share,
the global state it holds, and its uplink codec's state.

Everything a node must remember between messages lives in Flower's `Context.state`, which
Flower keeps per node for the whole run, also when the deployment engine starts a new
ClientApp process for every message. Module-level caches here only save recomputation
(tokenised shares); losing them loses nothing.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpress.codecs import Codec
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.memory import training_memory
from fedpress.task import LoraTask
from fedpress.training import Encoded, TrainResult

_encoded_shares: dict[tuple[str, int], list[Encoded]] = {}


def remember_config(msg: Message, context: Context) -> None:
    """Keep the run config the server sends once per run (with its first message)."""
    instructions = msg.content.config_records.get(protocol.INSTRUCTIONS)
    if instructions is not None and protocol.RUN_CONFIG in instructions:
        context.state[protocol.RUN_CONFIG] = ConfigRecord(
            {protocol.RUN_CONFIG: str(instructions[protocol.RUN_CONFIG])}
        )


def run_config(context: Context) -> RunConfig:
    """The run config this node received when the run started."""
    if protocol.RUN_CONFIG not in context.state.config_records:
        raise ValueError("no run config: the server did not start this run with this node")
    text = str(context.state.config_records[protocol.RUN_CONFIG][protocol.RUN_CONFIG])
    return RunConfig.from_json(text)


def use_threads(config: RunConfig) -> None:
    torch.set_num_threads(max(1, config.runtime.threads or config.federation.client_cpus))


def partition_id(context: Context, config: RunConfig) -> int:
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ValueError("this SuperNode has no 'partition-id' in its --node-config")
    partition = int(node_config["partition-id"])
    num_partitions = int(node_config.get("num-partitions", config.num_clients))
    if num_partitions != config.num_clients or not 0 <= partition < num_partitions:
        raise ValueError(
            f"node config partition {partition}/{num_partitions} does not fit "
            f"num_clients = {config.num_clients}"
        )
    return partition


def share(task: LoraTask, partition: int) -> list[Encoded]:
    """This node's tokenised training share (kept: tokenising is slow, the share never changes)."""
    key = (task.config.to_json(), partition)
    if key not in _encoded_shares:
        _encoded_shares.clear()
        _encoded_shares[key] = task.encode_all(task.splits.client_shares[partition])
    return _encoded_shares[key]


def receive_global(msg: Message, context: Context, task: LoraTask) -> dict[str, torch.Tensor]:
    """The round's global state: sent whole, or as a change to the copy this node holds."""
    if protocol.GLOBAL_ADAPTER in msg.content.array_records:
        return protocol.record_to_tensors(msg.content[protocol.GLOBAL_ADAPTER])
    if protocol.GLOBAL_VIEW in context.state.array_records:
        view = protocol.record_to_tensors(context.state[protocol.GLOBAL_VIEW])
    else:
        view = {k: v.clone() for k, v in task.initial_adapter.items()}
    codec = protocol.make_codec(task.config.downlink_codec, task.config.codec, uplink=False)
    change = protocol.decode_record(
        codec, msg.content[protocol.GLOBAL_DELTA], task.adapter_shapes()
    )
    view = {name: view[name] + change[name] for name in view}
    context.state[protocol.GLOBAL_VIEW] = protocol.tensors_to_record(view)
    return view


def encode_uplink(
    context: Context,
    codec: Codec,
    delta: dict[str, torch.Tensor],
    state_key: str = protocol.UPLINK_CODEC_STATE,
) -> ArrayRecord:
    """The change through the uplink codec; its state (error feedback) kept in Context.state."""
    if state_key in context.state.array_records:
        codec.load_state_dict(protocol.record_to_arrays(context.state[state_key]))
    shapes = {n: tuple(t.shape) for n, t in delta.items()}
    record = protocol.encode_record(codec, delta, shapes)
    context.state[state_key] = protocol.arrays_to_record(codec.state_dict())
    return record


def train_seed(config: RunConfig, step: int, partition: int) -> int:
    """The batch-order seed of one round (or turn) of one partition."""
    return config.seed * 1_000_003 + step * 1_009 + partition


def reply(
    msg: Message,
    update: ArrayRecord,
    result: TrainResult,
    memory: dict[str, int],
    codec_s: float,
    partition: int,
    **extra: int | float,
) -> Message:
    """The train reply every method sends: the update and the metrics the loop checks."""
    metrics = MetricRecord(
        {
            "num-examples": result.examples_seen,
            "train-loss": result.mean_loss,
            "train-s": result.seconds,
            "codec-s": codec_s,
            "peak-mem-bytes": int(memory["peak"]),
            "train-mem-bytes": int(memory["bytes"]),
            "partition-id": partition,
            **extra,
        }
    )
    content = RecordDict({protocol.UPDATE: update, protocol.TRAIN_METRICS: metrics})
    return Message(content, reply_to=msg)


__all__ = [
    "encode_uplink",
    "partition_id",
    "receive_global",
    "remember_config",
    "reply",
    "run_config",
    "share",
    "train_seed",
    "training_memory",
    "use_threads",
]
