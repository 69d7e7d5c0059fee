"""Fed-SB, server side: LoRA-FedAvg's server on the task whose adapter is the R's.

`prepare` runs the one-off phase (`init.run_first_step`) unless a resumed run restored A and B
from its checkpoint, installs them here, and ships them to every node once (`client.install`).
Rounds are LoRA-FedAvg's: the global R goes down, each client's change of R comes up through
the uplink codec, and their example-weighted mean (or the DP mechanism) steps the global R:
exact, since `B mean(R_i) A = mean(B R_i A)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedpress.accounting import message_nbytes
from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower import protocol
from fedpress.flower.exchange import RoundStats
from fedpress.methods.fed_sb.init import one_off_codec, random_start, run_first_step
from fedpress.methods.fed_sb.settings import INSTALL_PHASE
from fedpress.methods.fed_sb.task import (
    ADAPTER_R,
    build_sb_task,
    frozen_shapes,
    install_frozen,
    sb_layers,
)
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.task import LoraTask

log = logging.getLogger("fedpress")

FROZEN = "fedsb-frozen"  # server -> node, once: A and B as the one-off codec encoded them
FROZEN_STATE = "fedsb-frozen-payload"  # checkpoint: the same bytes, so a resumed run ships them
INSTALL_MESSAGE = f"{MessageType.TRAIN}.{INSTALL_PHASE}"


def installed() -> RecordDict:
    """A node's answer to the install message."""
    return RecordDict({"fedsb-installed": MetricRecord({"ok": 1})})


class FedSBServer(LoraFedAvgServer):
    def __init__(self, config: RunConfig, task: LoraTask, out_dir: Path) -> None:
        super().__init__(config, task, out_dir)
        self.frozen: ArrayRecord | None = None
        self.one_off: dict[str, Any] = {"fedsb_init_bytes_up": 0, "fedsb_init_bytes_down": 0}

    def prepare(self, grid: Grid, resume: bool) -> None:
        stats = self.stats.setdefault(min(self.stats, default=0), RoundStats())
        if self.frozen is None:
            if self.config.fedsb.init == "random":
                result = random_start(self.task)
            else:
                result = run_first_step(grid, self.task, self.partitions)
            self.frozen = result.frozen
            self.state = result.initial_r
            stats.sampled += len(result.bytes_down)
            stats.bytes_down.extend(result.bytes_down)
            stats.bytes_up.extend(result.bytes_up)
            stats.ok += result.clients
            stats.client_train_s += result.client_train_s
            self.one_off["fedsb_init_bytes_up"] = sum(result.bytes_up)
            self.one_off["fedsb_init_bytes_down"] = sum(result.bytes_down)
            self.one_off["fedsb_init_clients"] = result.clients
        install_frozen(self.task, self.decoded_frozen())
        self.ship_frozen(grid, stats)

    def decoded_frozen(self) -> dict[str, torch.Tensor]:
        shapes = frozen_shapes(self.task.model)
        return protocol.decode_record(one_off_codec(self.config), self.frozen, shapes)

    def ship_frozen(self, grid: Grid, stats: RoundStats) -> None:
        """A and B to every node, once per run (and again after a resume: new processes)."""
        messages = [
            Message(
                content=protocol.train_content({FROZEN: self.frozen}, 0),
                message_type=INSTALL_MESSAGE,
                dst_node_id=node_id,
            )
            for node_id in sorted(self.partitions)
        ]
        sent = [message_nbytes(m) for m in messages]
        stats.bytes_down.extend(sent)
        self.one_off["fedsb_install_bytes_down"] = self.one_off.get(
            "fedsb_install_bytes_down", 0
        ) + sum(sent)
        failed = 0
        for reply in grid.send_and_receive(
            messages, timeout=self.config.federation.round_timeout_s
        ):
            stats.bytes_up.append(message_nbytes(reply))
            if reply.has_error():
                failed += 1
                log.warning(
                    "fed-sb: node %d did not install A and B: %s",
                    reply.metadata.src_node_id,
                    reply.error.reason,
                )
        if failed == len(messages):
            raise FedpressError("fed-sb: no node installed the frozen A and B")

    def final_weights(self) -> dict[str, torch.Tensor]:
        """The plain LoRA adapter of the same model, `A` and `B R` by PEFT's names, so that
        `fedpress export`, `fedpress eval` and PEFT load a Fed-SB run like any LoRA run."""
        frozen = self.decoded_frozen()
        weights = {}
        for name in sb_layers(self.task.model):
            r = self.state[f"{name}.{ADAPTER_R}"]
            weights[f"{name}.lora_A.default.weight"] = frozen[f"{name}.A"].clone()
            weights[f"{name}.lora_B.default.weight"] = frozen[f"{name}.B"] @ r
        return weights

    def state_tensors(self) -> dict[str, torch.Tensor]:
        payload = self.frozen[protocol.PACKED].numpy()
        return {**super().state_tensors(), FROZEN_STATE: torch.from_numpy(payload.copy())}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        tensors = dict(tensors)
        payload = tensors.pop(FROZEN_STATE, None)
        if payload is None:
            raise FedpressError("the checkpoint has no fed-sb A and B: it is not a fed-sb run's")
        self.frozen = ArrayRecord({protocol.PACKED: Array(payload.numpy())})
        super().load_state_tensors(tensors)

    def summary_extra(self) -> dict[str, Any]:
        trainable = sum(v.numel() for v in self.state.values())
        return {**super().summary_extra(), **self.one_off, "fedsb_trainable_numbers": trainable}


def build_server(config: RunConfig, out_dir: Path) -> FedSBServer:
    return FedSBServer(config, build_sb_task(config), out_dir)
