"""LoRA-FedAvg (FedIT), server side: ship the global adapter (whole, or delta-encoded by the
downlink codec), decode each client's change, step the global adapter with the
example-weighted mean (or the `[aggregation]` rule; with `privacy.enabled`, the clipped,
noised uniform mean of client-level DP) through the server optimizer (`[server_optimizer]`;
FedAvg by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedpress.aggregation import RunningMean, aggregate, streams
from fedpress.codecs import Codec
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.flower.server import Accepted, FederatedServer
from fedpress.server_optimizer import ServerOptimizer
from fedpress.task import LoraTask, build_task


class LoraFedAvgServer(FederatedServer):
    def __init__(self, config: RunConfig, task: LoraTask, out_dir: Path) -> None:
        super().__init__(config, task, out_dir)
        self.shapes = task.adapter_shapes()
        self.initial = task.initial_adapter
        self.state = {name: value.clone() for name, value in self.initial.items()}
        self.uplink_codec: Codec = protocol.make_codec(
            config.uplink_codec, config.codec, uplink=True
        )
        self.downlink_codecs: dict[int, Codec] = {}
        self.views: dict[int, dict[str, torch.Tensor]] = {}
        self.optimizer = ServerOptimizer(config.server_optimizer)
        self.running: RunningMean | None = None  # this exchange's mean, as replies arrive
        self.privacy = None
        if config.privacy.enabled:
            from fedpress.privacy import PrivateAggregator

            self.privacy = PrivateAggregator(config)

    def global_state(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_global_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.state = tensors

    def configure_train(self, server_round: int, exchange: Any, nodes: list[int]) -> list[Message]:
        arrays = protocol.tensors_to_record(self.state)
        messages = []
        for node in nodes:
            instructions = ConfigRecord({protocol.SERVER_ROUND: server_round})
            content = RecordDict(
                {**self.downlink_record(node, arrays), protocol.INSTRUCTIONS: instructions}
            )
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        return messages

    def downlink_record(self, node: int, arrays: ArrayRecord) -> dict[str, Any]:
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
        change = {name: self.state[name] - view[name] for name in view}
        record = protocol.encode_record(codec, change, self.shapes)
        decoded = protocol.decode_record(codec, record, self.shapes)
        for name in view:
            view[name] += decoded[name]
        return {protocol.GLOBAL_DELTA: record}

    def decode_reply(
        self, server_round: int, exchange: Any, content: RecordDict, metrics: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        return protocol.decode_record(
            self.uplink_codec, content.array_records[protocol.UPDATE], self.shapes
        )

    def fold(self, server_round: int, exchange: Any, item: Accepted) -> bool:
        if self.privacy is not None or not streams(self.config.aggregation):
            return False
        if self.running is None:
            self.running = RunningMean(self.config.aggregation)
        self.running.add(item.update, item.weight)
        return True

    def aggregate_train(self, server_round: int, exchange: Any, accepted: list[Accepted]) -> None:
        if self.running is not None:
            mean, self.running = self.running.result(), None
        elif self.privacy is not None:
            mean = self.privacy.aggregate([a.update for a in accepted], server_round, self.shapes)
        else:
            updates, weights = [a.update for a in accepted], [a.weight for a in accepted]
            mean = aggregate(self.config.aggregation, updates, weights)
        self.state = self.optimizer.step(self.state, mean)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.optimizer.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.optimizer.load_state_tensors(tensors, self.state)

    def nobody_sampled(self, server_round: int) -> None:
        if self.privacy is not None:
            self.aggregate_train(server_round, None, [])

    # What the DP epsilon covers: every training round's upload (the only uploads).
    dp_covers = ["rounds"]

    def summary_extra(self) -> dict[str, Any]:
        return self.privacy.summary(self.dp_covers) if self.privacy is not None else {}


def build_server(config: RunConfig, out_dir: Path) -> LoraFedAvgServer:
    return LoraFedAvgServer(config, build_task(config), out_dir)
