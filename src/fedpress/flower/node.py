"""What every client does whatever its method: know the run, its data, the model it may load,
the global state it holds, and its uplink codec's state.

Two ways a node gets its data. On a deployed node, from its own node config
(`flower-supernode --node-config 'data-path="/srv/notes.json"'`, optional `data-format`,
`eval-path`, and `partition-id`/`num-partitions` to keep one part of the file): the server's
messages name no file, and the node never opens a path it was not given locally. On the
simulation engine, from the node config Flower builds (`partition-id`, `num-partitions`): that
partition of the run's `data.source`. The base model is the node's to choose on a deployed node
too: its `model-path`, or a built-in alias, or a model in its offline Hugging Face cache.

Everything a node must remember between messages lives in Flower's `Context.state`, which
Flower keeps per node for the whole run, also when the deployment engine starts a new
ClientApp process for every message. Module-level caches here only save recomputation
(tokenised shares); losing them loses nothing.

That process costs a deployed node ~5 s of CPU for importing torch and transformers, paid for
each train or evaluate message; the first message (the server's query) needs neither, so this
module imports them only in the functions that train, and a one-message process does not warm
up (`warm_up`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedpress.config import RunConfig
from fedpress.data import NodeData, node_data
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.flower.sizing import client_cpus

if TYPE_CHECKING:
    import torch

    from fedpress.codecs import Codec
    from fedpress.task import LoraTask
    from fedpress.training import Encoded, EvalResult, TrainResult

log = logging.getLogger("fedpress")

_encoded_shares: dict[tuple, list[Encoded]] = {}
_ENCODING = threading.Lock()


def remember_config(msg: Message, context: Context) -> None:
    """Keep the run config the server sends once per run (with its first message), and the
    client number it offers a node that has no partition id."""
    instructions = msg.content.config_records.get(protocol.INSTRUCTIONS)
    if instructions is not None and protocol.RUN_CONFIG in instructions:
        kept = {protocol.RUN_CONFIG: str(instructions[protocol.RUN_CONFIG])}
        if protocol.SLOT in instructions:
            kept[protocol.SLOT] = int(instructions[protocol.SLOT])
        context.state[protocol.RUN_CONFIG] = ConfigRecord(kept)


def received_config(context: Context) -> RunConfig:
    """The run config as the server sent it when the run started."""
    if protocol.RUN_CONFIG not in context.state.config_records:
        raise ValueError("no run config: the server did not start this run with this node")
    text = str(context.state.config_records[protocol.RUN_CONFIG][protocol.RUN_CONFIG])
    return RunConfig.from_json(text)


def run_config(context: Context) -> RunConfig:
    """The run config this node works with: the server's, with the model this node loads
    (`node_model`; a refusal fails the message that needed the model)."""
    config = received_config(context)
    return dataclasses.replace(config, model=node_model(context, config))


def has_local_data(context: Context) -> bool:
    return "data-path" in context.node_config


def node_model(context: Context, config: RunConfig) -> str:
    """What this node loads for the model the server names.

    The node config's `model-path` wins. A node with local data (a deployed node) otherwise
    accepts only a built-in alias or a model already in its offline Hugging Face cache, never a
    path: the server's name is only a name. On the simulation engine the server's choice holds
    (one machine, one config)."""
    from fedpress.models import SMOLLM2_ALIAS, TINY_MODELS, cached_hub_model

    own = context.node_config.get("model-path")
    if own:
        return str(own)
    if not has_local_data(context) or config.model in (SMOLLM2_ALIAS, *TINY_MODELS):
        return config.model
    cached = cached_hub_model(config.model)
    if cached is None:
        log.error("refused model %r: neither model-path nor in the cache", config.model)
        raise ValueError(
            f"this node does not have model '{config.model}': set model-path in its "
            "--node-config, or put the model in its offline Hugging Face cache"
        )
    return str(cached)


def use_threads(context: Context, config: RunConfig) -> None:
    """`runtime.threads`, else the cores the simulation gave this client, else (a deployed
    node: the machine is its own) every core."""
    import torch

    if config.runtime.threads:
        threads = config.runtime.threads
    elif has_local_data(context):
        threads = os.cpu_count() or 1
    else:
        threads = client_cpus(config)
    torch.set_num_threads(max(1, threads))


def partition_id(context: Context, config: RunConfig) -> int:
    """This node's client number: its partition id, or (a node with only its own data) the
    number the server offered when the run started."""
    node_config = context.node_config
    if "partition-id" not in node_config:
        if has_local_data(context):
            kept = context.state.config_records.get(protocol.RUN_CONFIG)
            if kept is not None and protocol.SLOT in kept:
                return int(kept[protocol.SLOT])
        raise ValueError(
            "this SuperNode has neither 'data-path' nor 'partition-id' in its --node-config"
        )
    partition = int(node_config["partition-id"])
    num_partitions = int(node_config.get("num-partitions", config.num_clients))
    if num_partitions != config.num_clients or not 0 <= partition < num_partitions:
        raise ValueError(
            f"node config partition {partition}/{num_partitions} does not fit "
            f"num_clients = {config.num_clients}"
        )
    return partition


def own_data(context: Context, config: RunConfig, task: LoraTask) -> NodeData:
    """This node's examples: its own files, or its partition of the run's data."""
    node_config = context.node_config
    if not has_local_data(context):
        if config.data.source == protocol.NODE_LOCAL:
            raise ValueError(
                "the server expects every node to bring its data: start this SuperNode with "
                "--node-config 'data-path=\"/path/to/file\"'"
            )
        partition = partition_id(context, config)
        splits = task.splits
        return NodeData(splits.client_shares[partition], splits.client_holdouts[partition], [])
    path, eval_path = str(node_config["data-path"]), str(node_config.get("eval-path", ""))
    part = None
    if "partition-id" in node_config:
        part = (partition_id(context, config), int(node_config.get("num-partitions", 1)))
    try:
        return node_data(
            config.data, config.seed, path, str(node_config.get("data-format", "")), eval_path, part
        )
    except FedpressError as exc:
        # Logged here in full; the reply names neither the node's paths nor file content.
        log.error("local data: %s", printable(str(exc)))
        reason = str(exc).replace(eval_path or "\0", "eval-path").replace(path, "data-path")
        raise ValueError(f"this node's data: {printable(reason)}") from None


def printable(text: str) -> str:
    """`text` with the bytes of a file name that is not UTF-8 (Python's surrogate escapes)
    written as `\\udcXX`: a log file or a reply message can carry it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def share(context: Context, config: RunConfig, task: LoraTask) -> list[Encoded]:
    """This node's tokenised training share (kept: tokenising is slow, the share never changes)."""
    encoded = _encoded(context, config, task, "share")
    if len(encoded) < config.train.batch_size:
        raise ValueError(
            f"this node's data has {len(encoded)} training examples; a round trains on batches "
            f"of {config.train.batch_size} (train.batch_size): it needs at least that many"
        )
    return encoded


def holdout(context: Context, config: RunConfig, task: LoraTask) -> list[Encoded]:
    """This node's set-aside part (TGAP's D1), tokenised."""
    return _encoded(context, config, task, "holdout")


def local_eval(context: Context, config: RunConfig, task: LoraTask) -> list[Encoded]:
    """This node's held-out examples (`eval-path`), tokenised; empty without one."""
    return _encoded(context, config, task, "eval_examples")


def _encoded(context: Context, config: RunConfig, task: LoraTask, part: str) -> list[Encoded]:
    key = (config.to_json(), tuple(sorted(context.node_config.items())), part)
    with _ENCODING:
        if key not in _encoded_shares:
            if len(_encoded_shares) >= 3:
                _encoded_shares.clear()
            _encoded_shares[key] = task.encode_all(getattr(own_data(context, config, task), part))
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


def node_info(partition: int, num_partitions: int, has_eval: bool) -> RecordDict:
    """The query reply's content: the client number this node takes, and whether it holds
    held-out data of its own."""
    info = {"partition-id": partition, "num-partitions": num_partitions, "has-eval": int(has_eval)}
    return RecordDict({protocol.NODE_INFO: MetricRecord(info)})


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


def warm_up(context: Context, build: Callable[[RunConfig], LoraTask] | None) -> None:
    """Build this node's task and tokenise its share in the background, so that the first
    turn finds them ready: the server meanwhile evaluates the untrained model. Not where the
    process ends with the reply (`serves_one_message`): the work would be lost. Any error here
    surfaces again, with its reply, in the first turn."""
    if build is None or serves_one_message():
        return

    def work() -> None:
        try:
            config = run_config(context)
            share(context, config, build(config))
        except Exception:  # noqa: BLE001 - the first turn reports it
            log.debug("warm-up failed; the first turn will say why", exc_info=True)

    threading.Thread(target=work, name="client-warm-up", daemon=True).start()


def serves_one_message() -> bool:
    """Whether this process ends with its reply: Flower's deployment engine (1.41) runs every
    message in a new `flwr-clientapp` process; the simulation engine keeps one per client."""
    return Path(sys.argv[0]).name == "flwr-clientapp"


def eval_reply(msg: Message, result: EvalResult) -> Message:
    """The federated-evaluation reply: example count, mean loss, accuracy (-1: not scorable)."""
    metrics = MetricRecord(
        {
            "eval-examples": result.examples,
            "eval-loss": result.loss,
            "eval-accuracy": -1.0 if result.accuracy is None else result.accuracy,
            "eval-s": result.seconds,
        }
    )
    return Message(RecordDict({protocol.EVAL_METRICS: metrics}), reply_to=msg)


__all__ = [
    "eval_reply",
    "warm_up",
    "encode_uplink",
    "has_local_data",
    "holdout",
    "local_eval",
    "node_info",
    "node_model",
    "own_data",
    "partition_id",
    "receive_global",
    "remember_config",
    "reply",
    "run_config",
    "serves_one_message",
    "share",
    "train_seed",
    "use_threads",
]
