"""Federated evaluation: after the server's own evaluation of a round, nodes with held-out
data of their own score the global model (`FederatedServer.configure_evaluate`)."""

from __future__ import annotations

import logging
import math
import random

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedpress import registry
from fedpress.accounting import message_nbytes
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.flower.server import FederatedServer, InvalidReply
from fedpress.run_files import RoundRecord

log = logging.getLogger("fedpress")


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
        content = server.configure_evaluate(server_round)
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
        raise InvalidReply(f"client failed: {protocol.failure_reason(reply.error.reason)}")
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
