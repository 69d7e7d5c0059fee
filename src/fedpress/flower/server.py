"""The server side of a federated method: what differs between methods, and the reply checks
every method shares.

A method subclasses `FederatedServer` and supplies, in Flower's strategy vocabulary, what to
send (`configure_train`), how to read a reply (`decode_reply`) and how to fold the accepted ones
into the global model (`aggregate_train`); the federation loop (`flower.loop`) does the rest.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.task import LoraTask

if TYPE_CHECKING:  # the exchange fills these; it imports this module
    from fedpress.flower.exchange import Delivery, RoundStats

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


class FederatedServer(abc.ABC):
    """The server side of a federated method: what differs between methods.

    `exchange` is whatever `exchanges` splits a round into: the sampled partitions (one
    exchange per round) or, for FedCyBGD, one turn of its walk.
    """

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
    @abc.abstractmethod
    def global_state(self) -> dict[str, torch.Tensor]:
        """The global model (or adapter): what is evaluated, checkpointed and saved."""

    @abc.abstractmethod
    def load_global_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take over a checkpoint's global state (a resumed run)."""

    @abc.abstractmethod
    def configure_train(self, server_round: int, exchange: Any, nodes: list[int]) -> list[Message]:
        """The messages of one exchange to `nodes` (node ids)."""

    @abc.abstractmethod
    def decode_reply(
        self, server_round: int, exchange: Any, content: RecordDict, metrics: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The update in a reply whose common metrics already passed; raise InvalidReply.

        Named `decode_reply`, not `decode`: it reads a whole reply (and may check it against
        the exchange), where a codec's `decode` turns one payload into tensors and is what
        this usually calls.
        """

    @abc.abstractmethod
    def aggregate_train(self, server_round: int, exchange: Any, accepted: list[Accepted]) -> None:
        """Change the global model with the accepted replies (sorted by partition)."""

    # -- what a method may change (the hooks without a body do nothing unless overridden)
    def fold(self, server_round: int, exchange: Any, item: Accepted) -> bool:
        """Take an accepted reply's update into the round's aggregate now, as it arrives;
        True if taken (the exchange then drops it). The default keeps every update for
        `aggregate_train`."""
        return False

    def prepare(self, grid: Grid, resume: bool) -> None:  # noqa: B027
        """A phase before round 1 (CG-FedLLM's TGAP); its cost goes into `self.stats[0]`."""

    def exchanges(self, server_round: int, partitions: list[int]) -> list[Any]:
        """How a round splits; each element is one exchange (send, collect, aggregate)."""
        return [tuple(partitions)]

    def exchange_partitions(self, exchange: Any) -> Sequence[int]:
        return exchange

    def rejected(self, node: int) -> None:  # noqa: B027
        """A sent message whose reply failed, was refused or never came."""

    def nobody_sampled(self, server_round: int) -> None:  # noqa: B027
        """A round Poisson sampling (privacy) drew no client for: a private method still
        releases its noise; the round counts as complete."""

    def state_dict(self) -> dict[str, Any]:
        """Server state a resumed run needs beyond the global state (JSON-able)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors a resumed run needs beyond the global state (a server optimizer's moments)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise FedpressError(
                f"checkpoint holds server state this method has not: {sorted(tensors)[:3]}"
            )

    def final_weights(self) -> dict[str, torch.Tensor]:
        """What the run folder keeps in `weights_file`: the global state, or the equivalent a
        standard tool loads (Fed-SB's R's become the plain LoRA adapter `A`, `B R`)."""
        return self.global_state()

    def summary_extra(self) -> dict[str, Any]:
        return {}

    def configure_evaluate(self, server_round: int) -> RecordDict:
        """What a node scores in federated evaluation: the whole global state. Unlike
        Flower's, it returns the content, not the messages: `FederatedEvaluation` picks the
        nodes."""
        return RecordDict(
            {
                protocol.GLOBAL_ADAPTER: protocol.tensors_to_record(self.global_state()),
                protocol.INSTRUCTIONS: ConfigRecord({protocol.SERVER_ROUND: server_round}),
            }
        )

    # -- shared reply checks
    def accept(self, server_round: int, exchange: Any, reply: Message) -> Accepted:
        if reply.has_error():
            raise InvalidReply(f"client failed: {protocol.failure_reason(reply.error.reason)}")
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
        update = self.decode_reply(server_round, exchange, content, metrics)
        return Accepted(update, weight, metrics, node)
