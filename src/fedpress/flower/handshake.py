"""The connection handshake: wait for the nodes, hand each the run config once, and learn which
client number (partition) each takes and which hold held-out data of their own."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedpress import registry
from fedpress.accounting import message_nbytes
from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.flower.exchange import RoundStats

log = logging.getLogger("fedpress")


def wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    """Node ids once `count` nodes are connected (SuperNodes may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= count:
            return node_ids
        if time.monotonic() > deadline:
            raise FedpressError(
                f"only {len(node_ids)} of {count} clients connected after {timeout_s:.0f} s"
            )
        time.sleep(1.0)


def config_for_nodes(config: RunConfig) -> RunConfig:
    """The run config a deployed server sends: no path of the server's machine. Nodes read
    their own data (`data-path`), resolve the model by name, and never see the server's files
    (an autoencoder checkpoint)."""
    raw = config.to_dict()
    raw["data"]["source"] = protocol.NODE_LOCAL
    if raw["data"]["eval_source"]:
        raw["data"]["eval_source"] = protocol.NODE_LOCAL
    model = Path(config.model).expanduser()
    if model.exists():
        raw["model"] = model.resolve().name
    for key in registry.get(config.method).server_files:
        section, name = key.split(".")
        if raw[section][name]:
            raw[section][name] = protocol.SERVER_ONLY
    return RunConfig.from_dict(raw)


@dataclass
class Nodes:
    """The connected nodes: node id -> client number, and which hold local held-out data."""

    partitions: dict[int, int]
    with_eval: set[int] = field(default_factory=set)


def question(run_config: str, slot: int) -> RecordDict:
    """The first query's content: the run config (JSON), and the client number offered."""
    instructions = ConfigRecord({protocol.RUN_CONFIG: run_config, protocol.SLOT: slot})
    return RecordDict({protocol.INSTRUCTIONS: instructions})


def connect(grid: Grid, config: RunConfig, stats: RoundStats, sent: RunConfig) -> Nodes:
    """Hand every node the run config `sent` (once per run; it keeps it in Context.state) and
    learn which client number it takes: its partition id, or the number offered here (a node
    with only its own data). These messages are counted in `stats`' bytes (round 0's, or the
    first resumed round's), not as sampled clients."""
    timeout = config.federation.connect_timeout_s
    node_ids = wait_for_nodes(grid, config.num_clients, timeout)
    text = sent.to_json()
    questions = [
        Message(content=question(text, i), message_type=MessageType.QUERY, dst_node_id=n)
        for i, n in enumerate(node_ids)
    ]
    stats.bytes_down.extend(message_nbytes(q) for q in questions)
    partitions: dict[int, int] = {}
    with_eval: set[int] = set()
    for reply in grid.send_and_receive(questions, timeout=timeout):
        stats.add_reply(reply)
        node = reply.metadata.src_node_id
        if reply.has_error() or protocol.NODE_INFO not in reply.content.metric_records:
            reason = (
                protocol.failure_reason(reply.error.reason) if reply.has_error() else "no node info"
            )
            log.warning("node %d did not say which partition it holds (%s); left out", node, reason)
            continue
        partition = reply.content.metric_records[protocol.NODE_INFO].get("partition-id")
        if not isinstance(partition, int) or not 0 <= partition < config.num_clients:
            log.warning("node %d claims partition %r; left out", node, partition)
            continue
        if partition in partitions.values():
            log.warning("node %d claims partition %d, already taken; left out", node, partition)
            continue
        partitions[node] = partition
        if reply.content.metric_records[protocol.NODE_INFO].get("has-eval"):
            with_eval.add(node)
    if len(partitions) < config.federation.min_replies:
        raise FedpressError(
            f"only {len(partitions)} nodes reported a valid partition; "
            f"federation.min_replies = {config.federation.min_replies}"
        )
    return Nodes(partitions, with_eval)
