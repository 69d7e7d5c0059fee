"""One exchange: send a method's messages, collect and check the replies, aggregate the valid
ones; retried while too few are valid. What it costs goes into the round's `RoundStats`, what
came of each message into a `Delivery`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedpress.accounting import message_nbytes, payload_nbytes, stopwatch
from fedpress.codecs import PayloadError
from fedpress.flower.server import Accepted, FederatedServer, InvalidReply
from fedpress.run_files import RoundRecord
from fedpress.training import EvalResult

log = logging.getLogger("fedpress")


@dataclass
class Delivery:
    """One message to one node and what came of it (per-turn reports)."""

    round: int
    exchange: int
    node: int
    bytes_down: int
    bytes_up: int = 0
    ok: bool = False
    train_s: float = 0.0
    peak_mem: int = 0
    train_mem: int = 0

    def record(self, bytes_up: int, accepted: Accepted | None) -> None:
        """Its reply came: `bytes_up` long, and accepted (with these metrics) or not."""
        self.bytes_up = bytes_up
        if accepted is not None:
            self.ok = True
            self.train_s = float(accepted.metrics["train-s"])
            self.peak_mem = int(accepted.metrics["peak-mem-bytes"])
            self.train_mem = int(accepted.metrics["train-mem-bytes"])


@dataclass
class RoundStats:
    """What one round cost; retried exchanges accumulate the bytes and clients of every try."""

    sampled: int = 0
    nodes: set[int] = field(default_factory=set)  # distinct nodes sent to
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    payload_down: int = 0  # the arrays alone, as Flower's ArrayRecord.count_bytes() counts
    payload_up: int = 0
    ok: int = 0
    failed: int = 0
    train_loss: float | None = None
    losses: list[tuple[float, float]] = field(default_factory=list)  # (loss, weight)
    client_train_s: float = 0.0
    codec_s: float = 0.0
    peak_mem: int = 0
    train_mem: int = 0
    started: float = 0.0
    aggregated: float = 0.0

    def add_sent(self, message: Message) -> int:
        """A train message out (its node counts as sampled); its size in bytes."""
        nbytes = message_nbytes(message)
        self.bytes_down.append(nbytes)
        self.payload_down += payload_nbytes(message)
        self.sampled += 1
        self.nodes.add(message.metadata.dst_node_id)
        return nbytes

    def add_reply(self, reply: Message) -> int:
        """A reply in, valid or not; its size in bytes."""
        nbytes = message_nbytes(reply)
        self.bytes_up.append(nbytes)
        self.payload_up += payload_nbytes(reply)
        return nbytes

    def add_accepted(self, accepted: list[Accepted]) -> None:
        """One try's accepted replies: their count, losses, client time and memory."""
        self.ok += len(accepted)
        self.failed = self.sampled - self.ok
        self.losses.extend((float(a.metrics["train-loss"]), a.weight) for a in accepted)
        self.client_train_s += sum(float(a.metrics["train-s"]) for a in accepted)
        self.codec_s += sum(float(a.metrics["codec-s"]) for a in accepted)
        for a in accepted:
            self.peak_mem = max(self.peak_mem, int(a.metrics["peak-mem-bytes"]))
            self.train_mem = max(self.train_mem, int(a.metrics["train-mem-bytes"]))

    def finish(self) -> None:
        """The round is aggregated: its example-weighted train loss, and the moment."""
        if self.losses:
            total = sum(w for _, w in self.losses)
            self.train_loss = sum(loss * w for loss, w in self.losses) / total
        self.aggregated = time.perf_counter()

    def round_record(
        self, server_round: int, result: EvalResult, parallel_clients: int
    ) -> RoundRecord:
        """The round's metrics line: what it cost, and the server's evaluation `result`."""
        round_s = (self.aggregated - self.started) if server_round else 0.0
        # Clients run `parallel_clients` at a time: their compute on the critical path.
        client_critical = (self.client_train_s + self.codec_s) / max(
            1, min(parallel_clients, self.ok or 1)
        )
        return RoundRecord(
            round=server_round,
            train_loss=self.train_loss,
            eval_loss=result.loss,
            accuracy=result.accuracy,
            eval_examples=result.examples,
            clients_sampled=self.sampled,
            clients_participated=len(self.nodes),
            clients_ok=self.ok,
            clients_failed=self.failed,
            bytes_up=sum(self.bytes_up),
            bytes_down=sum(self.bytes_down),
            bytes_up_per_client=self.bytes_up,
            bytes_down_per_client=self.bytes_down,
            payload_bytes_up=self.payload_up,
            payload_bytes_down=self.payload_down,
            client_peak_mem_bytes=self.peak_mem,
            client_train_mem_bytes=self.train_mem,
            client_train_s=self.client_train_s,
            codec_s=self.codec_s,
            eval_s=result.seconds,
            round_wall_s=round_s + result.seconds,
            orchestration_s=max(0.0, round_s - client_critical) if server_round else 0.0,
        )


def run_exchange(
    grid: Grid,
    server: FederatedServer,
    server_round: int,
    index: int,
    exchange: Any,
    stats: RoundStats,
) -> None:
    """Send one exchange, collect and check the replies, aggregate the valid ones; retried
    while fewer than `federation.min_replies` (or all sent, if fewer) are valid."""
    federation = server.config.federation
    by_partition = {p: n for n, p in server.partitions.items()}
    nodes = [by_partition[p] for p in server.exchange_partitions(exchange) if p in by_partition]
    for _attempt in range(federation.max_retries + 1):
        with stopwatch() as encode_time:
            messages = server.configure_train(server_round, exchange, nodes)
        stats.codec_s += encode_time["s"]
        sent: dict[int, Delivery] = {}
        for message in messages:
            node = message.metadata.dst_node_id
            sent[node] = Delivery(server_round, index, node, stats.add_sent(message))
        server.deliveries.extend(sent.values())
        accepted: list[Accepted] = []
        # Replies as they arrive: a method that folds each into its aggregate right away
        # (`fold`) lets this loop drop it, so the server never holds the round's updates.
        for reply in grid.send_and_receive(messages, timeout=federation.round_timeout_s):
            delivery = sent.pop(reply.metadata.src_node_id, None)
            nbytes = stats.add_reply(reply)
            item = check_reply(server, server_round, exchange, reply, stats)
            del reply
            if delivery is not None:
                delivery.record(nbytes, item)
            if item is not None:
                with stopwatch() as fold_time:
                    if server.fold(server_round, exchange, item):
                        item.update = {}
                stats.codec_s += fold_time["s"]
                accepted.append(item)
        for node in sent:  # sent, never answered (timeout): its state is unknown
            log.warning("round %d: no reply from node %d", server_round, node)
            server.rejected(node)
        # A fixed order (by partition) makes a held-update sum independent of arrival.
        accepted.sort(key=lambda item: item.metrics["partition-id"])
        if accepted:
            with stopwatch() as aggregate_time:
                server.aggregate_train(server_round, exchange, accepted)
            stats.codec_s += aggregate_time["s"]
        stats.add_accepted(accepted)
        needed = min(federation.min_replies, len(messages))
        if len(accepted) >= needed and (accepted or not messages):
            return
        log.warning(
            "round %d: %d valid replies of %d, fewer than federation.min_replies = %d",
            server_round,
            len(accepted),
            len(messages),
            federation.min_replies,
        )
        if federation.on_too_few == "stop":
            return


def check_reply(
    server: FederatedServer, server_round: int, exchange: Any, reply: Message, stats: RoundStats
) -> Accepted | None:
    """The reply checked and decoded (its time counts as codec time), or None: refused,
    logged, and the method told (`rejected`)."""
    try:
        with stopwatch() as decode_time:
            item = server.accept(server_round, exchange, reply)
    except (InvalidReply, PayloadError) as exc:
        node = reply.metadata.src_node_id
        client = server.partitions.get(node, "?")
        log.warning(
            "round %d: rejected reply from client %s (node %d): %s", server_round, client, node, exc
        )
        server.rejected(node)
        return None
    stats.codec_s += decode_time["s"]
    return item
