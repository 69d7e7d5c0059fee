"""ClientApp: receive the global adapter, train on this node's share, send back the change.

The partition comes from the node's config (`partition-id`, `num-partitions`: set by the
simulation engine, or by `flower-supernode --node-config` in a deployment); everything else
arrives in the server's message, so a SuperNode needs no fedpress config of its own.

State that must outlive a round (the uplink codec's error-feedback residual, the client's copy
of the global adapter when the downlink is delta-compressed) lives in Flower's `Context.state`,
which Flower keeps per node for the whole run, even when it restarts the ClientApp process.
"""

from __future__ import annotations

import importlib

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedpress.accounting import peak_memory_bytes, stopwatch
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.task import LoraTask, build_task
from fedpress.training import Encoded

app = ClientApp()

_encoded_shares: dict[tuple[str, int], list[Encoded]] = {}

# Methods with a client side of their own: method -> "module:function(msg, context, config)".
CLIENT_HANDLERS = {
    "fedcybgd": "fedpress.methods.fedcybgd:client_train",
    "fed-full": "fedpress.methods.fed_full:client_train",
}


@app.train()
def train(msg: Message, context: Context) -> Message:
    instructions: ConfigRecord = msg.content[protocol.INSTRUCTIONS]
    config = RunConfig.from_json(str(instructions[protocol.RUN_CONFIG]))
    server_round = int(instructions[protocol.SERVER_ROUND])
    partition_id = _partition_id(context, config)
    torch.set_num_threads(max(1, config.runtime.threads or config.federation.client_cpus))
    if config.method in CLIENT_HANDLERS:
        module, _, function = CLIENT_HANDLERS[config.method].partition(":")
        return getattr(importlib.import_module(module), function)(msg, context, config)

    task = build_task(config)
    if instructions.get(protocol.PHASE) == "tgap":  # CG-FedLLM pre-training: D1 snapshots
        from fedpress.autoencoders.tgap import client_tgap

        return client_tgap(msg, task, partition_id)
    data = _share(task, partition_id)
    with stopwatch() as download_codec:
        global_state = _receive_global(msg, context, task)
    task.set_adapter(global_state)
    result = task.train_round(
        data,
        server_round,
        steps=config.train.local_steps,
        seed=config.seed * 1_000_003 + server_round * 1_009 + partition_id,
    )
    # Send the change of the adapter this round, not its absolute state (SPEC section 1).
    end_state = task.adapter()
    with stopwatch() as upload_codec:
        delta = {name: end_state[name] - global_state[name] for name in end_state}
        if config.privacy.enabled and config.privacy.client_clip:
            from fedpress.privacy import clip_update

            delta = clip_update(delta, config.privacy.clip_norm)
        if config.method == "cg-fedllm":
            from fedpress.methods.cg_fedllm import client_uplink_codec

            codec = client_uplink_codec(msg, context, config, task.adapter_shapes())
        else:
            codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        if protocol.UPLINK_CODEC_STATE in context.state:
            codec.load_state_dict(
                protocol.record_to_arrays(context.state[protocol.UPLINK_CODEC_STATE])
            )
        update = protocol.encode_record(codec, delta, task.adapter_shapes())
        context.state[protocol.UPLINK_CODEC_STATE] = protocol.arrays_to_record(codec.state_dict())
    metrics = MetricRecord(
        {
            "num-examples": result.examples_seen,
            "train-loss": result.mean_loss,
            "train-s": result.seconds,
            "codec-s": download_codec["s"] + upload_codec["s"],
            "peak-mem-bytes": peak_memory_bytes(task.device),
            "partition-id": partition_id,
        }
    )
    content = RecordDict({protocol.UPDATE: update, protocol.TRAIN_METRICS: metrics})
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (it samples clients by partition)."""
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ValueError("this SuperNode has no 'partition-id' in its --node-config")
    info = MetricRecord(
        {
            "partition-id": int(node_config["partition-id"]),
            "num-partitions": int(node_config.get("num-partitions", -1)),
        }
    )
    return Message(RecordDict({protocol.NODE_INFO: info}), reply_to=msg)


def _receive_global(msg: Message, context: Context, task: LoraTask) -> dict[str, torch.Tensor]:
    """The round's global adapter: sent whole, or as a change to the copy this node holds."""
    if protocol.GLOBAL_ADAPTER in msg.content.array_records:
        return protocol.record_to_tensors(msg.content[protocol.GLOBAL_ADAPTER])
    if protocol.GLOBAL_VIEW in context.state:
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


def _partition_id(context: Context, config: RunConfig) -> int:
    node_config = context.node_config
    if "partition-id" not in node_config:
        raise ValueError("this SuperNode has no 'partition-id' in its --node-config")
    partition_id = int(node_config["partition-id"])
    num_partitions = int(node_config.get("num-partitions", config.num_clients))
    if num_partitions != config.num_clients or not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node config partition {partition_id}/{num_partitions} does not fit "
            f"num_clients = {config.num_clients}"
        )
    return partition_id


def _share(task: LoraTask, partition_id: int) -> list[Encoded]:
    key = (task.config.to_json(), partition_id)
    if key not in _encoded_shares:
        _encoded_shares.clear()
        _encoded_shares[key] = task.encode_all(task.splits.client_shares[partition_id])
    return _encoded_shares[key]
