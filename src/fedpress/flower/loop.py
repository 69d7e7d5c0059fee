"""The one federation loop every federated method runs through, inside the ServerApp.

Read top to bottom: connect (which node holds which partition; the run config goes to every
node once), resume or start, the method's preparation phase (CG-FedLLM's TGAP), then per
round: sample, one or more exchanges (send, collect, validate, apply; retried when too few
valid replies come back), evaluate, record, checkpoint; then the final evaluation.

A method supplies a `FederatedServer`: what to send (`configure`), how to read a reply
(`decode`), how to apply the accepted ones (`apply`), and, when a round is not one exchange
(FedCyBGD's turns), how it splits (`exchanges`). Everything else is here, once.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from tqdm import tqdm

from fedpress import registry
from fedpress.accounting import MB, message_nbytes, stopwatch
from fedpress.checkpoint import load_checkpoint, save_checkpoint
from fedpress.codecs import PayloadError
from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.flower.progress import ProgressGrid
from fedpress.run_files import RoundRecord, RunRecorder
from fedpress.task import LoraTask
from fedpress.training import EvalResult

log = logging.getLogger("fedpress")

# Metrics every train reply carries (non-negative, finite).
METRIC_KEYS = (
    "num-examples",
    "train-loss",
    "train-s",
    "codec-s",
    "peak-mem-bytes",
    "train-mem-bytes",
)


class InvalidReply(ValueError):
    """A client reply that must not touch the global model."""


@dataclass
class Accepted:
    """A validated reply: the decoded update, its weight (examples) and its metrics."""

    update: dict[str, torch.Tensor]
    weight: float
    metrics: dict[str, Any]
    node: int


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


@dataclass
class RoundStats:
    """What one round cost; retried exchanges accumulate the bytes and clients of every try."""

    sampled: int = 0
    nodes: set[int] = field(default_factory=set)  # distinct nodes sent to
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
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


# Checkpoint tensors under this prefix are `FederatedServer.state_tensors`, the rest the global
# state (parameter names hold no "/").
SERVER_STATE = "server-state/"


class FederatedServer:
    """The server side of a federated method: what differs between methods."""

    weights_file = "adapter.safetensors"

    def __init__(self, config: RunConfig, task: LoraTask, out_dir: Path) -> None:
        self.config = config
        self.task = task
        self.out_dir = Path(out_dir)
        self.partitions: dict[int, int] = {}  # node id -> partition id (set by the loop)
        self.stats: dict[int, RoundStats] = {}
        self.deliveries: list[Delivery] = []
        self.max_examples = config.train.local_steps * config.train.batch_size

    # -- what every method provides
    def global_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_global_state(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def configure(self, server_round: int, exchange: Any, nodes: list[int]) -> list[Message]:
        """The messages of one exchange to `nodes` (node ids)."""
        raise NotImplementedError

    def decode(
        self, server_round: int, exchange: Any, content: RecordDict, metrics: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The update in a reply whose common metrics already passed; raise InvalidReply."""
        raise NotImplementedError

    def apply(self, server_round: int, exchange: Any, accepted: list[Accepted]) -> None:
        """Change the global model with the accepted replies (sorted by partition)."""
        raise NotImplementedError

    # -- what a method may change
    def prepare(self, grid: Grid, resume: bool) -> None:
        """A phase before round 1 (CG-FedLLM's TGAP); its cost goes into `self.stats[0]`."""

    def exchanges(self, server_round: int, partitions: list[int]) -> list[Any]:
        """How a round splits; each element is one exchange (send, collect, apply)."""
        return [tuple(partitions)]

    def exchange_partitions(self, exchange: Any) -> Sequence[int]:
        return exchange

    def rejected(self, node: int) -> None:
        """A sent message whose reply failed, was refused or never came."""

    def nobody_sampled(self, server_round: int) -> None:
        """A round Poisson sampling (privacy) drew no client for: a private method still
        releases its noise; the round counts as complete."""

    def state_dict(self) -> dict[str, Any]:
        """Server state a resumed run needs beyond the global state (JSON-able)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a resumed run needs beyond the global state (a server optimizer's moments)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise FedpressError(
                f"checkpoint holds server state this method has not: {sorted(tensors)[:3]}"
            )

    def summary_extra(self) -> dict[str, Any]:
        return {}

    def evaluation_content(self, server_round: int) -> RecordDict:
        """What a node scores in federated evaluation: the whole global state."""
        return RecordDict(
            {
                protocol.GLOBAL_ADAPTER: protocol.tensors_to_record(self.global_state()),
                protocol.INSTRUCTIONS: ConfigRecord({protocol.SERVER_ROUND: server_round}),
            }
        )

    # -- shared reply checks
    def accept(self, server_round: int, exchange: Any, reply: Message) -> Accepted:
        if reply.has_error():
            raise InvalidReply(f"client failed: {reply.error.reason}")
        return self.read(server_round, exchange, reply.content, reply.metadata.src_node_id)

    def read(self, server_round: int, exchange: Any, content: RecordDict, node: int) -> Accepted:
        """Check a reply against what this exchange could legitimately produce."""
        if (
            protocol.UPDATE not in content.array_records
            or protocol.TRAIN_METRICS not in content.metric_records
        ):
            raise InvalidReply(f"missing '{protocol.UPDATE}' or '{protocol.TRAIN_METRICS}' record")
        metrics = dict(content.metric_records[protocol.TRAIN_METRICS])
        for key in METRIC_KEYS:
            value = metrics.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidReply(f"metric '{key}' missing or invalid: {value!r}")
        weight = float(metrics["num-examples"])
        if not 1 <= weight <= self.max_examples:
            raise InvalidReply(
                f"claims {weight:g} examples; a turn trains on at most {self.max_examples}"
            )
        if metrics.get("partition-id") != self.partitions.get(node):
            raise InvalidReply(f"reports partition {metrics.get('partition-id')!r}")
        update = self.decode(server_round, exchange, content, metrics)
        return Accepted(update, weight, metrics, node)


# --------------------------------------------------------------------------- connecting


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


def connect(grid: Grid, config: RunConfig, stats: RoundStats, sent: RunConfig) -> Nodes:
    """Hand every node the run config `sent` (once per run; it keeps it in Context.state) and
    learn which client number it takes: its partition id, or the number offered here (a node
    with only its own data). These messages are counted in round 0's bytes."""
    timeout = config.federation.connect_timeout_s
    node_ids = wait_for_nodes(grid, config.num_clients, timeout)
    text = sent.to_json()
    questions = [
        Message(
            content=RecordDict(
                {protocol.INSTRUCTIONS: ConfigRecord({protocol.RUN_CONFIG: text, protocol.SLOT: i})}
            ),
            message_type=MessageType.QUERY,
            dst_node_id=n,
        )
        for i, n in enumerate(node_ids)
    ]
    stats.bytes_down.extend(message_nbytes(q) for q in questions)
    partitions: dict[int, int] = {}
    with_eval: set[int] = set()
    for reply in grid.send_and_receive(questions, timeout=timeout):
        stats.bytes_up.append(message_nbytes(reply))
        node = reply.metadata.src_node_id
        if reply.has_error() or protocol.NODE_INFO not in reply.content.metric_records:
            reason = reply.error.reason if reply.has_error() else "no node info"
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


class FederatedEvaluation:
    """Nodes score the global model on their own held-out data (`eval-path`); the server
    aggregates loss and accuracy weighted by their example counts, into the round's record.
    A node that fails is logged and counted; its figures are left out."""

    def __init__(self, config: RunConfig, with_eval: set[int]) -> None:
        method = registry.get(config.method)
        fraction = config.eval.federated_fraction
        self.nodes = sorted(with_eval) if registry.EVALUATE in method.client and fraction else []
        self.count = max(1, round(len(self.nodes) * fraction)) if self.nodes else 0
        self.rng = random.Random(config.seed + 17)
        self.timeout = config.federation.round_timeout_s

    def run(
        self, grid: Grid, server: FederatedServer, server_round: int, record: RoundRecord
    ) -> None:
        if not self.nodes:
            return
        chosen = sorted(self.rng.sample(self.nodes, self.count))
        content = server.evaluation_content(server_round)
        messages = [
            Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
            for node in chosen
        ]
        record.fed_eval_bytes_down = sum(message_nbytes(m) for m in messages)
        loss = correct = examples = scored = 0.0
        ok = 0
        for reply in grid.send_and_receive(messages, timeout=self.timeout):
            record.fed_eval_bytes_up += message_nbytes(reply)
            node = reply.metadata.src_node_id
            try:
                figures = _eval_figures(reply)
            except InvalidReply as exc:
                log.warning("round %d: evaluation on node %d failed: %s", server_round, node, exc)
                continue
            ok += 1
            n, node_loss, accuracy = figures
            examples += n
            loss += node_loss * n
            if accuracy >= 0:
                correct += accuracy * n
                scored += n
        record.fed_eval_nodes = ok
        record.fed_eval_failed = len(chosen) - ok
        if examples:
            record.fed_eval_examples = int(examples)
            record.fed_eval_loss = loss / examples
            record.fed_eval_accuracy = correct / scored if scored else None


def _eval_figures(reply: Message) -> tuple[float, float, float]:
    """(examples, mean loss, accuracy or -1) from a federated-evaluation reply, checked."""
    if reply.has_error():
        raise InvalidReply(f"client failed: {reply.error.reason}")
    if protocol.EVAL_METRICS not in reply.content.metric_records:
        raise InvalidReply(f"no '{protocol.EVAL_METRICS}' record")
    metrics = reply.content.metric_records[protocol.EVAL_METRICS]
    values = [metrics.get(k) for k in ("eval-examples", "eval-loss", "eval-accuracy")]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise InvalidReply(f"invalid evaluation figures {values!r}")
    n, loss, accuracy = (float(v) for v in values)
    if n < 1 or loss < 0 or accuracy > 1:
        raise InvalidReply(f"invalid evaluation figures {values!r}")
    return n, loss, accuracy


def client_cpus(config: RunConfig) -> int:
    """Cores per simulated client: `federation.client_cpus`, or (0) this machine's cores
    spread over the clients sampled per round."""
    cpus = os.cpu_count() or 1
    if config.federation.client_cpus > 0:
        return min(config.federation.client_cpus, cpus)
    sampled = max(1, round(config.num_clients * config.federation.fraction_train))
    return max(1, cpus // min(sampled, cpus))


def parallel_slots(config: RunConfig) -> int:
    """How many clients the simulation engine runs at once on this machine."""
    return max(1, (os.cpu_count() or 1) // client_cpus(config))


class Sampler:
    """Which partitions take part in a round.

    Without privacy: `federation.fraction_train` of them (at least one), drawn from the run's
    seed over partition ids, so the same seed picks the same clients in every run whatever
    node ids the nodes got. With differential privacy: each independently with probability
    `fraction_train` from secret randomness, the Poisson sampling the accountant assumes; a
    participation list derivable from the public seed would void its amplification.
    """

    def __init__(self, config: RunConfig) -> None:
        self.fraction = config.federation.fraction_train
        self.secret = config.privacy.enabled
        self.rng: random.Random = (
            random.SystemRandom() if self.secret else random.Random(config.seed)
        )

    def sample(self, partitions: list[int]) -> list[int]:
        if self.secret:
            return [p for p in sorted(partitions) if self.rng.random() < self.fraction]
        count = max(1, round(len(partitions) * self.fraction))
        return sorted(self.rng.sample(sorted(partitions), count))

    def state_dict(self) -> dict[str, Any]:
        if self.secret:
            return {}
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state and not self.secret:
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))


# --------------------------------------------------------------------------- the loop


def run_federation(
    grid: Grid,
    server: FederatedServer,
    parallel_clients: int,
    resume: bool = False,
    deployed: bool = False,
) -> dict[str, Any]:
    """The whole federated run; the summary of `summary.json`. `deployed`: nodes bring their
    own data and the messages carry no path (`config_for_nodes`)."""
    config, task, out_dir = server.config, server.task, server.out_dir
    sampler = Sampler(config)
    checkpoint = load_checkpoint(out_dir) if resume else None
    first_round = 1
    if checkpoint is not None:
        tensors, state = checkpoint
        extra = {
            k[len(SERVER_STATE) :]: tensors.pop(k)
            for k in list(tensors)
            if k.startswith(SERVER_STATE)
        }
        if set(tensors) != set(server.global_state()):
            raise FedpressError(f"checkpoint in {out_dir} does not match this model")
        server.load_global_state(tensors)
        server.load_state_tensors(extra)
        sampler.load_state_dict(state.get("sampler", {}))
        server.load_state_dict(state.get("method", {}))
        first_round = state["round"] + 1
        recorder = RunRecorder(out_dir, config, state["round"], state["elapsed_s"])
        log.warning("resuming %s after round %d", out_dir, state["round"])
    else:
        recorder = RunRecorder(out_dir, config)
    # Connecting costs messages too: round 0's, or the first resumed round's.
    setup_round = 0 if first_round == 1 else first_round
    setup_stats = server.stats.setdefault(setup_round, RoundStats(started=time.perf_counter()))
    sent = config_for_nodes(config) if deployed else config
    (out_dir / "sent_run_config.json").write_text(sent.to_json())
    # Every exchange, the first query and TGAP's included, polls for replies every 0.2 s
    # (Flower's deployment grid: every 3 s).
    nodes = connect(ProgressGrid(grid, "query"), config, setup_stats, sent)
    server.partitions = nodes.partitions
    evaluators = FederatedEvaluation(config, nodes.with_eval)
    grid = ProgressGrid(grid, "exchange")
    server.prepare(grid, resume)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    progress = tqdm(
        total=config.rounds, initial=first_round - 1, desc=f"{config.method} rounds", unit="round"
    )

    def evaluate_and_record(server_round: int) -> None:
        task.set_adapter(server.global_state())
        result = task.evaluate(eval_subset)
        stats = server.stats.get(server_round, RoundStats())
        record = round_record(server_round, stats, result, parallel_clients)
        evaluators.run(grid, server, server_round, record)
        recorder.log_round(record)
        progress.set_postfix_str(_postfix(record))

    try:
        if first_round == 1:
            evaluate_and_record(0)
        for server_round in range(first_round, config.rounds + 1):
            stats = server.stats.setdefault(server_round, RoundStats(started=time.perf_counter()))
            participants = sampler.sample(sorted(server.partitions.values()))
            if not participants:
                log.warning("round %d: no client sampled", server_round)
                server.nobody_sampled(server_round)
            exchanges = server.exchanges(server_round, participants) if participants else []
            steps = tqdm(exchanges, desc=f"round {server_round}", unit="exchange", leave=False)
            for index, exchange in enumerate(steps if len(exchanges) > 1 else exchanges):
                run_exchange(grid, server, server_round, index, exchange, stats)
            if participants and stats.ok < config.federation.min_replies:
                raise FedpressError(
                    f"round {server_round} got too few valid client replies ({stats.ok}, "
                    f"federation.min_replies = {config.federation.min_replies}); stopped. The "
                    f"checkpoint of round {server_round - 1} is intact: `fedpress run --resume "
                    f"<run folder>` continues"
                )
            if stats.losses:
                total = sum(w for _, w in stats.losses)
                stats.train_loss = sum(loss * w for loss, w in stats.losses) / total
            stats.aggregated = time.perf_counter()
            evaluate_and_record(server_round)
            progress.update(1)
            extra = {f"{SERVER_STATE}{k}": v for k, v in server.state_tensors().items()}
            save_checkpoint(
                out_dir,
                {**server.global_state(), **extra},
                {
                    "round": server_round,
                    "elapsed_s": recorder.elapsed(),
                    "sampler": sampler.state_dict(),
                    "method": server.state_dict(),
                },
            )
    finally:
        progress.close()
    final_state = server.global_state()
    task.set_adapter(final_state)
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    return recorder.finish(
        final_state,
        final.loss,
        final.accuracy,
        final.examples,
        {**server.summary_extra(), "final_eval_s": final.seconds},
        weights_file=server.weights_file,
    )


def run_exchange(
    grid: Grid,
    server: FederatedServer,
    server_round: int,
    index: int,
    exchange: Any,
    stats: RoundStats,
) -> None:
    """Send one exchange, collect and check the replies, apply the valid ones; retried while
    fewer than `federation.min_replies` (or all sent, if fewer) are valid."""
    federation = server.config.federation
    by_partition = {p: n for n, p in server.partitions.items()}
    nodes = [by_partition[p] for p in server.exchange_partitions(exchange) if p in by_partition]
    for _attempt in range(federation.max_retries + 1):
        with stopwatch() as encode_time:
            messages = server.configure(server_round, exchange, nodes)
        stats.codec_s += encode_time["s"]
        sent: dict[int, Delivery] = {}
        for message in messages:
            nbytes = message_nbytes(message)
            stats.bytes_down.append(nbytes)
            sent[message.metadata.dst_node_id] = Delivery(
                server_round, index, message.metadata.dst_node_id, nbytes
            )
        server.deliveries.extend(sent.values())
        stats.sampled += len(messages)
        stats.nodes.update(sent)
        replies = grid.send_and_receive(messages, timeout=federation.round_timeout_s)
        accepted: list[Accepted] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            nbytes = message_nbytes(reply)
            stats.bytes_up.append(nbytes)
            delivery = sent.pop(node, None)
            if delivery is not None:
                delivery.bytes_up = nbytes
            try:
                with stopwatch() as decode_time:
                    item = server.accept(server_round, exchange, reply)
                stats.codec_s += decode_time["s"]
            except (InvalidReply, PayloadError) as exc:
                log.warning("round %d: rejected reply from node %d: %s", server_round, node, exc)
                server.rejected(node)
                continue
            if delivery is not None:
                delivery.ok = True
                delivery.train_s = float(item.metrics["train-s"])
                delivery.peak_mem = int(item.metrics["peak-mem-bytes"])
                delivery.train_mem = int(item.metrics["train-mem-bytes"])
            accepted.append(item)
        for node in sent:  # sent, never answered (timeout): its state is unknown
            log.warning("round %d: no reply from node %d", server_round, node)
            server.rejected(node)
        # A fixed order (by partition) makes the floating-point sum independent of arrival.
        accepted.sort(key=lambda item: item.metrics["partition-id"])
        stats.ok += len(accepted)
        stats.failed = stats.sampled - stats.ok
        if accepted:
            with stopwatch() as apply_time:
                server.apply(server_round, exchange, accepted)
            stats.codec_s += apply_time["s"]
            stats.losses.extend((float(a.metrics["train-loss"]), a.weight) for a in accepted)
            stats.client_train_s += sum(float(a.metrics["train-s"]) for a in accepted)
            stats.codec_s += sum(float(a.metrics["codec-s"]) for a in accepted)
            for a in accepted:
                stats.peak_mem = max(stats.peak_mem, int(a.metrics["peak-mem-bytes"]))
                stats.train_mem = max(stats.train_mem, int(a.metrics["train-mem-bytes"]))
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
        clients_participated=len(stats.nodes),
        clients_ok=stats.ok,
        clients_failed=stats.failed,
        bytes_up=sum(stats.bytes_up),
        bytes_down=sum(stats.bytes_down),
        bytes_up_per_client=stats.bytes_up,
        bytes_down_per_client=stats.bytes_down,
        client_peak_mem_bytes=stats.peak_mem,
        client_train_mem_bytes=stats.train_mem,
        client_train_s=stats.client_train_s,
        codec_s=stats.codec_s,
        eval_s=result.seconds,
        round_wall_s=round_s + result.seconds,
        orchestration_s=max(0.0, round_s - client_critical) if server_round else 0.0,
    )


def _postfix(record: RoundRecord) -> str:
    acc = "" if record.accuracy is None else f" acc={100 * record.accuracy:.1f}%"
    return f"eval_loss={record.eval_loss:.3f}{acc} up={record.cum_bytes_up / MB:.1f}MB"
