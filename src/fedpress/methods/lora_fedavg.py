"""LoRA-FedAvg (FedIT): clients train the LoRA adapter, the server averages their changes.

`LoraFedAvg` is a Flower `Strategy`: `configure_train` samples clients and ships the global
adapter (whole, or delta-encoded by the downlink codec), `aggregate_train` validates every
reply and applies the example-weighted mean of the accepted adapter changes.
`run_lora_fedavg` is the recipe the ServerApp runs: rounds over the Flower Grid, evaluation of
the global adapter after each round, and an atomic checkpoint after each round so that a
crashed run resumes where it stopped.
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
from fedpress.checkpoint import load_checkpoint, save_checkpoint
from fedpress.codecs import Codec, PayloadError
from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.flower.progress import ProgressGrid
from fedpress.reporting import MB, RoundRecord, RunRecorder
from fedpress.task import LoraTask, Shapes, build_task
from fedpress.training import EvalResult

log = logging.getLogger("fedpress")


class InvalidReply(ValueError):
    """A client reply that must not touch the global model."""


@dataclass
class RoundStats:
    """What one round cost; a retried round accumulates the bytes and clients of every try."""

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
        self.parallel_clients = max(1, parallel_clients)
        self.rng = random.Random(config.seed)
        self.stats: dict[int, RoundStats] = {}
        self.current: dict[str, torch.Tensor] = {}
        self.max_examples = config.train.local_steps * config.train.batch_size
        self.uplink_codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        self.downlink_codecs: dict[int, Codec] = {}
        self.views: dict[int, dict[str, torch.Tensor]] = {}
        # node id -> partition id, learned from the nodes at start (see discover_partitions).
        self.partitions: dict[int, int] = {}
        # Client-level DP on the aggregate (privacy.enabled): clip, uniform mean, Gaussian noise.
        self.privacy = None
        if config.privacy.enabled:
            from fedpress.privacy import PrivateAggregator

            self.privacy = PrivateAggregator(config)

    def prepare(self, grid: Grid, task, out_dir: Path, resume: bool) -> None:  # noqa: ANN001
        """Hook before the first round, once the partitions are known (CG-FedLLM: TGAP)."""

    def summary_extra(self) -> dict:
        """Method-specific figures for summary.json."""
        return self.privacy.summary() if self.privacy is not None else {}

    def summary(self) -> None:
        log.info(
            "LoRA-FedAvg: %d clients, fraction %.2f, uplink %s, downlink %s",
            self.config.num_clients,
            self.config.federation.fraction_train,
            self.config.uplink_codec,
            self.config.downlink_codec,
        )

    def state_dict(self) -> dict:
        """Server state a resumed run needs beyond the global adapter (JSON-able)."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def sample(self, server_round: int) -> list[int]:
        """Node ids of this round's clients, drawn over partition ids so that the same seed
        picks the same clients in every run, whatever ids the nodes got."""
        by_partition = {p: n for n, p in self.partitions.items()}
        count = max(1, round(len(by_partition) * self.config.federation.fraction_train))
        chosen = sorted(self.rng.sample(sorted(by_partition), count))
        return [by_partition[p] for p in chosen]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        stats = self.stats.setdefault(server_round, RoundStats(started=time.perf_counter()))
        self.current = protocol.record_to_tensors(arrays)
        instructions = ConfigRecord(
            {protocol.RUN_CONFIG: self.config.to_json(), protocol.SERVER_ROUND: server_round}
        )
        messages = []
        for node in self.sample(server_round):
            with stopwatch() as encode_time:
                downlink = self.downlink_record(node, arrays)
            stats.codec_s += encode_time["s"]
            content = RecordDict({**downlink, protocol.INSTRUCTIONS: instructions})
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        stats.sampled += len(messages)
        stats.bytes_down.extend(message_nbytes(m) for m in messages)
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
        # A fixed order (by partition) makes the floating-point sum independent of arrival order.
        accepted.sort(key=lambda item: item[2]["partition-id"])
        stats.ok = len(accepted)
        stats.failed = stats.sampled - stats.ok
        stats.aggregated = time.perf_counter()
        if not accepted:
            return None, None
        total = sum(weight for _, weight, _ in accepted)
        new_state = {}
        if self.privacy is not None:
            noisy_mean = self.privacy.aggregate([d for d, _, _ in accepted], server_round)
            new_state = {name: value + noisy_mean[name] for name, value in self.current.items()}
        for name, value in self.current.items():
            if name in new_state:
                continue
            mean_delta = sum(delta[name] * (weight / total) for delta, weight, _ in accepted)
            new_state[name] = value + mean_delta
        stats.train_loss = sum(m["train-loss"] * w for _, w, m in accepted) / total
        stats.client_train_s = sum(float(m["train-s"]) for _, _, m in accepted)
        stats.codec_s += sum(float(m["codec-s"]) for _, _, m in accepted)
        stats.peak_mem = max(int(m["peak-mem-bytes"]) for _, _, m in accepted)
        metrics = MetricRecord({"train-loss": stats.train_loss, "clients-ok": stats.ok})
        return protocol.tensors_to_record(new_state), metrics

    def read_reply(self, reply: Message) -> tuple[dict[str, torch.Tensor], float, dict]:
        return self.read_content(reply.content, reply.metadata.src_node_id)

    def read_content(
        self, content: RecordDict, node: int
    ) -> tuple[dict[str, torch.Tensor], float, dict]:
        """Check a reply against what this round could legitimately produce."""
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
        if metrics.get("partition-id") != self.partitions.get(node):
            raise InvalidReply(f"reports partition {metrics.get('partition-id')!r}")
        record = content.array_records[protocol.UPDATE]
        delta = protocol.decode_record(self.uplink_codec, record, self.shapes)
        return delta, weight, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the server evaluates the global adapter itself

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


def discover_partitions(grid: Grid, config: RunConfig) -> dict[int, int]:
    """Ask every node which data partition it holds (a Flower query message)."""
    timeout = config.federation.connect_timeout_s
    node_ids = wait_for_nodes(grid, config.num_clients, timeout)
    questions = [
        Message(content=RecordDict(), message_type=MessageType.QUERY, dst_node_id=n)
        for n in node_ids
    ]
    partitions: dict[int, int] = {}
    for reply in grid.send_and_receive(questions, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error() or protocol.NODE_INFO not in reply.content.metric_records:
            log.warning("node %d did not say which partition it holds; left out", node)
            continue
        partition = reply.content.metric_records[protocol.NODE_INFO].get("partition-id")
        if not isinstance(partition, int) or not 0 <= partition < config.num_clients:
            log.warning("node %d claims partition %r; left out", node, partition)
            continue
        if partition in partitions.values():
            log.warning("node %d claims partition %d, already taken; left out", node, partition)
            continue
        partitions[node] = partition
    if len(partitions) < config.federation.min_replies:
        raise FedpressError(
            f"only {len(partitions)} nodes reported a valid partition; "
            f"federation.min_replies = {config.federation.min_replies}"
        )
    return partitions


def parallel_slots(config: RunConfig) -> int:
    """How many clients the simulation engine runs at once on this machine."""
    cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, min(config.federation.client_cpus, cpus)))


def run_lora_fedavg(
    grid: Grid,
    config: RunConfig,
    out_dir: Path,
    parallel_clients: int,
    resume: bool = False,
    task: LoraTask | None = None,
    weights_file: str = "adapter.safetensors",
    strategy_cls: type[LoraFedAvg] = LoraFedAvg,
) -> dict:
    """The whole federated run, inside the ServerApp. `task` replaces the LoRA task (fed-full
    passes the full model, whose "adapter" is every parameter); `strategy_cls` is a LoraFedAvg
    variant (cg-fedllm's)."""
    task = task or build_task(config)
    strategy = strategy_cls(config, task.adapter_shapes(), task.initial_adapter, parallel_clients)
    checkpoint = load_checkpoint(out_dir) if resume else None
    arrays = protocol.tensors_to_record(task.initial_adapter)
    first_round = 1
    if checkpoint is not None:
        tensors, state = checkpoint
        arrays = protocol.tensors_to_record(tensors)
        strategy.load_state_dict(state["strategy"])
        first_round = state["round"] + 1
        recorder = RunRecorder(out_dir, config, state["round"], state["elapsed_s"])
        log.warning("resuming %s after round %d", out_dir, state["round"])
    else:
        recorder = RunRecorder(out_dir, config)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    strategy.partitions = discover_partitions(grid, config)
    strategy.prepare(grid, task, out_dir, resume)
    grid = ProgressGrid(grid, "round")
    progress = tqdm(
        total=config.rounds, initial=first_round - 1, desc=f"{config.method} rounds", unit="round"
    )

    def evaluate_and_record(server_round: int) -> None:
        task.set_adapter(protocol.record_to_tensors(arrays))
        result = task.evaluate(eval_subset)
        stats = strategy.stats.get(server_round, RoundStats())
        record = round_record(server_round, stats, result, strategy.parallel_clients)
        recorder.log_round(record)
        progress.set_postfix_str(_postfix(record))

    try:
        if first_round == 1:
            evaluate_and_record(0)
        for server_round in range(first_round, config.rounds + 1):
            arrays = train_round(grid, strategy, server_round, arrays)
            evaluate_and_record(server_round)
            progress.update(1)
            save_checkpoint(
                out_dir,
                protocol.record_to_tensors(arrays),
                {
                    "round": server_round,
                    "strategy": strategy.state_dict(),
                    "elapsed_s": recorder.elapsed(),
                },
            )
    finally:
        progress.close()
    final_state = protocol.record_to_tensors(arrays)
    task.set_adapter(final_state)
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    return recorder.finish(
        final_state,
        final.loss,
        final.accuracy,
        final.examples,
        strategy.summary_extra(),
        weights_file=weights_file,
    )


def round_record(
    server_round: int, stats: RoundStats, result: EvalResult, parallel_clients: int
) -> RoundRecord:
    """One round's metrics line from what the round cost and the server's evaluation."""
    round_s = (stats.aggregated - stats.started) if server_round else 0.0
    # Clients run `parallel_clients` at a time: their compute on the critical path.
    client_critical = (stats.client_train_s + stats.codec_s) / max(
        1, min(parallel_clients, stats.ok or 1)
    )
    return RoundRecord(
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


def train_round(
    grid: Grid, strategy: LoraFedAvg, server_round: int, arrays: ArrayRecord
) -> ArrayRecord:
    """One round; retried (or the run stopped) when too few valid replies come back."""
    federation = strategy.config.federation
    for attempt in range(federation.max_retries + 1):
        messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = grid.send_and_receive(messages, timeout=federation.round_timeout_s)
        new_arrays, _ = strategy.aggregate_train(server_round, replies)
        ok = strategy.stats[server_round].ok
        if new_arrays is not None and ok >= federation.min_replies:
            return new_arrays
        log.warning(
            "round %d: %d valid replies, fewer than federation.min_replies = %d",
            server_round,
            ok,
            federation.min_replies,
        )
        if federation.on_too_few == "stop" or attempt == federation.max_retries:
            break
    raise FedpressError(
        f"round {server_round} got too few valid client replies; stopped. The checkpoint of "
        f"round {server_round - 1} is intact: `fedpress run --resume <run folder>` continues"
    )


def _postfix(record: RoundRecord) -> str:
    acc = "" if record.accuracy is None else f" acc={100 * record.accuracy:.1f}%"
    return f"eval_loss={record.eval_loss:.3f}{acc} up={record.cum_bytes_up / MB:.1f}MB"
