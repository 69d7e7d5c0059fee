"""LoRA-FedAvg (FedIT): clients train the LoRA adapter, the server averages their changes.

A Flower `Strategy`: `configure_train` samples clients and ships the global adapter,
`aggregate_train` validates each reply, then applies the example-weighted mean of the
clients' adapter changes. Flower's `Strategy.start` drives the rounds; the `evaluate_fn`
it calls after each round scores the global adapter and records the round.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from tqdm import tqdm

from fedpress.accounting import message_nbytes, stopwatch
from fedpress.codecs import Codec, PayloadError
from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.flower.progress import ProgressGrid
from fedpress.reporting import MB, RoundRecord, RunRecorder
from fedpress.task import Shapes, build_task

log = logging.getLogger("fedpress")


class InvalidReply(ValueError):
    """A client reply that must not touch the global model."""


@dataclass
class RoundStats:
    sampled: int = 0
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    ok: int = 0
    failed: int = 0
    train_loss: float | None = None
    client_train_s: float = 0.0
    codec_s: float = 0.0
    peak_mem: int = 0
    started: float = 0.0
    aggregated: float = 0.0


class LoraFedAvg(Strategy):
    def __init__(
        self,
        config: RunConfig,
        shapes: Shapes,
        initial: dict[str, torch.Tensor],
        parallel_clients: int,
    ) -> None:
        self.config = config
        self.shapes = shapes
        self.initial = initial
        self.uplink_codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        self.downlink_codecs: dict[int, Codec] = {}
        self.views: dict[int, dict[str, torch.Tensor]] = {}
        self.parallel_clients = max(1, parallel_clients)
        self.rng = random.Random(config.seed)
        self.stats: dict[int, RoundStats] = {}
        self.current: dict[str, torch.Tensor] = {}
        self.max_examples = config.train.local_steps * config.train.batch_size

    def summary(self) -> None:
        log.info(
            "LoRA-FedAvg: %d clients, fraction %.2f",
            self.config.num_clients,
            self.config.federation.fraction_train,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        stats = self.stats.setdefault(server_round, RoundStats(started=time.perf_counter()))
        self.current = protocol.record_to_tensors(arrays)
        node_ids = wait_for_nodes(
            grid, self.config.num_clients, self.config.federation.round_timeout_s
        )
        count = max(1, round(len(node_ids) * self.config.federation.fraction_train))
        sampled = sorted(self.rng.sample(node_ids, count))
        instructions = ConfigRecord(
            {protocol.RUN_CONFIG: self.config.to_json(), protocol.SERVER_ROUND: server_round}
        )
        messages = []
        for node in sampled:
            with stopwatch() as encode_time:
                downlink = self.downlink_record(node, arrays)
            stats.codec_s += encode_time["s"]
            content = RecordDict({**downlink, protocol.INSTRUCTIONS: instructions})
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        stats.sampled = len(messages)
        stats.bytes_down = [message_nbytes(m) for m in messages]
        return messages

    def downlink_record(self, node: int, arrays: ArrayRecord) -> dict[str, ArrayRecord]:
        """The whole adapter, or the encoded change since what this node already holds.

        The server tracks each node's copy (starting from the seeded initial adapter that
        every process builds) and updates it with exactly what the node will decode, so the
        compression error of one round is sent again in the next instead of accumulating.
        """
        if self.config.downlink_codec == "none":
            return {protocol.GLOBAL_ADAPTER: arrays}
        view = self.views.setdefault(node, {k: v.clone() for k, v in self.initial.items()})
        codec = self.downlink_codecs.setdefault(
            node, protocol.make_codec(self.config.downlink_codec, self.config.codec, uplink=False)
        )
        change = {name: self.current[name] - view[name] for name in view}
        record = protocol.encode_record(codec, change, self.shapes)
        decoded = protocol.decode_record(codec, record, self.shapes)
        for name in view:
            view[name] += decoded[name]
        return {protocol.GLOBAL_DELTA: record}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        stats = self.stats[server_round]
        accepted: list[tuple[dict[str, torch.Tensor], float, dict]] = []
        replies = list(replies)
        for reply in replies:
            stats.bytes_up.append(message_nbytes(reply))
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning(
                    "round %d: client on node %d failed: %s", server_round, node, reply.error.reason
                )
                continue
            try:
                with stopwatch() as decode_time:
                    delta, weight, metrics = self.read_reply(reply)
                stats.codec_s += decode_time["s"]
            except (InvalidReply, PayloadError) as exc:
                log.warning("round %d: rejected reply from node %d: %s", server_round, node, exc)
                continue
            accepted.append((delta, weight, metrics))
        stats.ok = len(accepted)
        stats.failed = stats.sampled - stats.ok
        stats.aggregated = time.perf_counter()
        if not accepted:
            log.warning("round %d: no valid client update; global adapter unchanged", server_round)
            return None, None
        total = sum(weight for _, weight, _ in accepted)
        new_state = {}
        for name, value in self.current.items():
            mean_delta = sum(delta[name] * (weight / total) for delta, weight, _ in accepted)
            new_state[name] = value + mean_delta
        stats.train_loss = sum(m["train-loss"] * w for _, w, m in accepted) / total
        stats.client_train_s = sum(float(m["train-s"]) for _, _, m in accepted)
        stats.codec_s += sum(float(m["codec-s"]) for _, _, m in accepted)
        stats.peak_mem = max(int(m["peak-mem-bytes"]) for _, _, m in accepted)
        metrics = MetricRecord({"train-loss": stats.train_loss, "clients-ok": stats.ok})
        return protocol.tensors_to_record(new_state), metrics

    def read_reply(self, reply: Message) -> tuple[dict[str, torch.Tensor], float, dict]:
        """Check a reply against what this round could legitimately produce."""
        content = reply.content
        if (
            protocol.UPDATE not in content.array_records
            or protocol.TRAIN_METRICS not in content.metric_records
        ):
            raise InvalidReply(f"missing '{protocol.UPDATE}' or '{protocol.TRAIN_METRICS}' record")
        metrics = dict(content.metric_records[protocol.TRAIN_METRICS])
        for key in ("num-examples", "train-loss", "train-s", "codec-s", "peak-mem-bytes"):
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidReply(f"metric '{key}' missing or invalid: {value!r}")
        weight = float(metrics["num-examples"])
        if not 1 <= weight <= self.max_examples:
            raise InvalidReply(
                f"claims {weight:g} examples; a round trains on at most {self.max_examples}"
            )
        record = content.array_records[protocol.UPDATE]
        delta = protocol.decode_record(self.uplink_codec, record, self.shapes)
        return delta, weight, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global adapter itself (evaluate_fn)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


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


def parallel_slots(config: RunConfig) -> int:
    """How many clients the simulation engine runs at once on this machine."""
    cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, min(config.federation.client_cpus, cpus)))


def run_lora_fedavg(grid: Grid, config: RunConfig, out_dir: Path, parallel_clients: int) -> dict:
    """The whole federated run, inside the ServerApp."""
    task = build_task(config)
    recorder = RunRecorder(out_dir, config)
    strategy = LoraFedAvg(config, task.adapter_shapes(), task.initial_adapter, parallel_clients)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    progress = tqdm(total=config.rounds, desc=f"{config.method} rounds", unit="round", leave=True)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        task.set_adapter(protocol.record_to_tensors(arrays))
        result = task.evaluate(eval_subset)
        stats = strategy.stats.get(server_round, RoundStats())
        round_s = (stats.aggregated - stats.started) if server_round else 0.0
        # Clients run `parallel_clients` at a time: their compute on the critical path.
        client_critical = (stats.client_train_s + stats.codec_s) / max(
            1, min(strategy.parallel_clients, stats.ok or 1)
        )
        record = RoundRecord(
            round=server_round,
            train_loss=stats.train_loss,
            eval_loss=result.loss,
            accuracy=result.accuracy,
            eval_examples=result.examples,
            clients_sampled=stats.sampled,
            clients_ok=stats.ok,
            clients_failed=stats.failed,
            bytes_up=sum(stats.bytes_up),
            bytes_down=sum(stats.bytes_down),
            bytes_up_per_client=stats.bytes_up,
            bytes_down_per_client=stats.bytes_down,
            client_peak_mem_bytes=stats.peak_mem,
            client_train_s=stats.client_train_s,
            codec_s=stats.codec_s,
            eval_s=result.seconds,
            round_wall_s=round_s + result.seconds,
            orchestration_s=max(0.0, round_s - client_critical) if server_round else 0.0,
        )
        recorder.log_round(record)
        if server_round:
            progress.update(1)
        progress.set_postfix_str(_postfix(record, recorder))
        return MetricRecord({"eval-loss": result.loss, "accuracy": result.accuracy or 0.0})

    try:
        result = strategy.start(
            ProgressGrid(grid, "round"),
            protocol.tensors_to_record(task.adapter()),
            num_rounds=config.rounds,
            timeout=config.federation.round_timeout_s,
            evaluate_fn=evaluate_fn,
        )
    finally:
        progress.close()
    final_state = protocol.record_to_tensors(result.arrays) if result.arrays else task.adapter()
    task.set_adapter(final_state)
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    return recorder.finish(final_state, final.loss, final.accuracy, final.examples)


def _postfix(record: RoundRecord, recorder: RunRecorder) -> str:
    acc = "" if record.accuracy is None else f" acc={100 * record.accuracy:.1f}%"
    return f"eval_loss={record.eval_loss:.3f}{acc} up={record.cum_bytes_up / MB:.1f}MB"
