"""FedKSeed, server side: the global state is one accumulated scalar per seed plus the
history of the rounds' aggregated scalars, from which every node rebuilds the model.

A train message carries the rounds the node has not received (a few bytes a seed drawn);
a reply carries one scalar sum per seed its client drew. The server averages them, weighted
by examples (with lr constant and no weight decay, this is FedAvg of the clients' changes
exactly), applies the round to its own copy of the model (`replay.catch_up`) and records it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Message, MessageType, RecordDict

from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.flower.server import Accepted, FederatedServer, InvalidReply
from fedpress.methods.fedkseed.client import FIRST_ROUND, ROUNDS
from fedpress.methods.fedkseed.replay import History, KSeedTask, build_kseed_task, catch_up

HISTORY_STATE = "fedkseed-history/"  # checkpoint: the history's three arrays


class FedKSeedServer(FederatedServer):
    weights_file = "model.safetensors"

    def __init__(self, config: RunConfig, task: KSeedTask, out_dir: Path) -> None:
        super().__init__(config, task, out_dir)
        self.scalars = torch.zeros(config.fedkseed.seeds)
        self.history = History.empty()
        self.sent: dict[int, int] = {}  # node -> rounds of history it has received
        self.forward_passes = 0
        self.catch_up_bytes = 0

    def global_state(self) -> dict[str, torch.Tensor]:
        return {"scalars": self.scalars}

    def load_global_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.scalars = tensors["scalars"].float()

    def configure_train(self, server_round: int, exchange: Any, nodes: list[int]) -> list[Message]:
        messages = []
        for node in nodes:
            first = self.sent.get(node, 0)
            missing = self.history.since(first)
            content = protocol.train_content(
                {ROUNDS: protocol.tensors_to_record(missing.as_arrays())},
                server_round,
                **{FIRST_ROUND: first},
            )
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
            self.sent[node] = self.history.rounds
        return messages

    def rejected(self, node: int) -> None:
        self.sent.pop(node, None)  # its history is unknown: the next message sends it all

    def decode_reply(
        self, server_round: int, exchange: Any, content: RecordDict, metrics: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        record = content.array_records[protocol.UPDATE]
        if sorted(record.keys()) != ["seeds", "values"]:
            raise InvalidReply(f"expected arrays 'seeds' and 'values', got {sorted(record)[:3]}")
        seeds, values = record["seeds"].numpy(), record["values"].numpy()
        steps = self.config.train.local_steps
        if seeds.dtype != np.int64 or values.dtype != np.float32:
            raise InvalidReply(f"seeds {seeds.dtype} / values {values.dtype}: int64 / float32")
        if seeds.ndim != 1 or seeds.shape != values.shape or not 1 <= seeds.size <= steps:
            raise InvalidReply(f"{seeds.size} scalars; a turn draws 1 to {steps} seeds")
        if seeds[0] < 0 or seeds[-1] >= self.config.fedkseed.seeds or np.any(np.diff(seeds) <= 0):
            raise InvalidReply("seed indices out of the pool or not strictly increasing")
        if not np.all(np.isfinite(values)):
            raise InvalidReply("non-finite scalars")
        passes = metrics.get("forward-passes")
        if not isinstance(passes, int) or not 0 < passes <= 2 * steps:
            raise InvalidReply(f"claims {passes!r} forward passes")
        return {"seeds": torch.from_numpy(seeds.copy()), "values": torch.from_numpy(values.copy())}

    def aggregate_train(self, server_round: int, exchange: Any, accepted: list[Accepted]) -> None:
        """The example-weighted mean of the clients' scalar sums, per seed, as this round."""
        total = sum(a.weight for a in accepted)
        sums = torch.zeros(self.config.fedkseed.seeds, dtype=torch.float64)
        drawn = torch.zeros(self.config.fedkseed.seeds, dtype=torch.bool)
        for item in accepted:
            seeds = item.update["seeds"]
            sums.index_add_(0, seeds, item.update["values"].double() * (item.weight / total))
            drawn[seeds] = True
            self.forward_passes += int(item.metrics["forward-passes"])
        seeds = drawn.nonzero().flatten()
        values = sums[seeds].float()
        self.history = self.history.extended(
            History(seeds, values, torch.tensor([seeds.numel()], dtype=torch.int64))
        )
        self.scalars[seeds] += values
        self.task = catch_up(self.task, self.history)

    def nobody_sampled(self, server_round: int) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{HISTORY_STATE}{k}": v for k, v in self.history.as_arrays().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        arrays = {k.removeprefix(HISTORY_STATE): v for k, v in tensors.items()}
        if sorted(arrays) != ["counts", "seeds", "values"]:
            raise ValueError("the checkpoint has no FedKSeed history: it is not a fedkseed run's")
        self.history = History(arrays["seeds"], arrays["values"], arrays["counts"])
        self.task = catch_up(self.task, self.history)

    def final_weights(self) -> dict[str, torch.Tensor]:
        """The global model, as fed-full's run folders hold theirs (`model.safetensors`)."""
        return {
            name: param.detach().to("cpu", torch.float32).clone()
            for name, param in self.task.model.named_parameters()
        }

    def summary_extra(self) -> dict[str, Any]:
        weights = sum(p.numel() for p in self.task.parameters())
        return {
            "client_forward_passes_total": self.forward_passes,
            "fedkseed_rounds_recorded": self.history.rounds,
            "fedkseed_scalars_recorded": int(self.history.seeds.numel()),
            # What catching a node up by sending the model instead of scalars would cost.
            "fedkseed_model_bytes": 4 * weights,
        }


def build_server(config: RunConfig, out_dir: Path) -> FedKSeedServer:
    # The pretrained model: a process that ran this config before reloads it.
    return FedKSeedServer(config, catch_up(build_kseed_task(config), History.empty()), out_dir)
