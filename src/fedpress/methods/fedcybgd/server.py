"""FedCyBGD, server side: a round is a walk of turns (`turns.plan_round`); each turn sends one
client (several for `aggregated`, FedBAvg) the model compressed by `download` (responsible
block exact, frozen rest layer-dropped, pruned and delta-synced) and writes the block change
it gets back before the next turn. A failed or hostile reply costs only its turn."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MessageType, RecordDict

from fedpress.accounting import message_nbytes
from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.flower.server import Accepted, FederatedServer, InvalidReply
from fedpress.methods.fedcybgd.download import Download, SyncTracker, encode_download
from fedpress.methods.fedcybgd.turns import (
    Turn,
    cybgd_task,
    plan_round,
    pruning_base,
    task_layout,
)

log = logging.getLogger("fedpress")

MODEL = "cybgd-model"  # server -> client: the (compressed) model for this turn
BLOCK, TURN, DROPPED, SYNCS, TOKEN = "block", "turn", "dropped", "syncs", "token"


def turn_content(
    record: ArrayRecord,
    server_round: int,
    turn: Turn,
    download: Download,
    tracker: SyncTracker,
    node: int,
    token: str,
) -> RecordDict:
    """A turn's message: the download and what the client must know to train its block."""
    return protocol.train_content(
        {MODEL: record},
        server_round,
        **{
            BLOCK: turn.block,
            TURN: turn.number,
            DROPPED: json.dumps(download.dropped),
            SYNCS: tracker.syncs.get(node, 0) if tracker.delta_sync else 0,
            TOKEN: token,
        },
    )


class FedCyBGDServer(FederatedServer):
    def __init__(self, config: RunConfig, out_dir: Path) -> None:
        task = cybgd_task(config)
        super().__init__(config, task, out_dir)
        self.weights_file = "adapter.safetensors" if config.cybgd.peft else "model.safetensors"
        self.layout = task_layout(task)
        self.pretrained = task.initial_adapter
        # The global model (or adapter in PEFT mode), fp32 on CPU.
        self.state = {name: value.clone() for name, value in self.pretrained.items()}
        self.prune_base = pruning_base(config, self.pretrained)
        cybgd = config.cybgd
        self.tracker = SyncTracker(
            self.layout,
            cybgd.delta_sync,
            cybgd.layer_drop_ratio,
            cybgd.prune_ratio,
            not cybgd.peft,
        )
        self.token = uuid.uuid4().hex  # client views from another run (or a resume) are stale
        self.uplink_codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        self.inflight: dict[int, Any] = {}  # node -> the download it was sent this turn
        self.full_model_bytes = message_nbytes(
            RecordDict({MODEL: protocol.tensors_to_record(self.pretrained)})
        )
        log.info(
            "FedCyBGD: %d blocks, allocation %s, layer drop %.2f, prune %.2f of the %s, "
            "delta sync %s",
            len(self.layout.trainable),
            cybgd.allocation,
            cybgd.layer_drop_ratio,
            cybgd.prune_ratio,
            cybgd.prune_target,
            cybgd.delta_sync,
        )

    def global_state(self) -> dict[str, torch.Tensor]:
        return self.state

    def load_global_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.state = tensors
        for block in self.layout.blocks:  # nodes start afresh; they hold the pretrained weights
            if any(not torch.equal(tensors[n], self.pretrained[n]) for n in block.params):
                self.tracker.changed(block.index)

    def exchanges(self, server_round: int, partitions: list[int]) -> list[Turn]:
        return plan_round(
            self.config.cybgd, self.layout.trainable, partitions, server_round, self.config.seed
        )

    def exchange_partitions(self, exchange: Turn) -> tuple[int, ...]:
        return exchange.partitions

    def configure_train(self, server_round: int, exchange: Turn, nodes: list[int]) -> list[Message]:
        """The turn's messages: each client gets only what it lacks of the current model."""
        block = self.layout.blocks[exchange.block]
        messages = []
        for node in nodes:
            download = self.tracker.plan(node, block, self.state)
            record = encode_download(download, self.tracker.prune_ratio, self.prune_base)
            content = turn_content(
                record, server_round, exchange, download, self.tracker, node, self.token
            )
            self.inflight[node] = download
            messages.append(
                Message(content=content, message_type=MessageType.TRAIN, dst_node_id=node)
            )
        return messages

    def decode_reply(
        self, server_round: int, exchange: Turn, content: RecordDict, metrics: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        block = self.layout.blocks[exchange.block]
        if metrics.get(BLOCK) != block.index or metrics.get(TURN) != exchange.number:
            raise InvalidReply(
                f"reports block {metrics.get(BLOCK)!r} of turn {metrics.get(TURN)!r}, "
                f"expected block {block.index} of turn {exchange.number}"
            )
        shapes = {n: tuple(self.state[n].shape) for n in block.params}
        return protocol.decode_record(
            self.uplink_codec, content.array_records[protocol.UPDATE], shapes
        )

    def rejected(self, node: int) -> None:
        self.inflight.pop(node, None)
        self.tracker.forget(node)  # it restarts from the pretrained weights

    def aggregate_train(self, server_round: int, exchange: Turn, accepted: list[Accepted]) -> None:
        """Write the (averaged) block change back."""
        for item in accepted:
            self.tracker.delivered(item.node, self.inflight.pop(item.node))
        block = self.layout.blocks[exchange.block]
        total = sum(a.weight for a in accepted)
        for name in block.params:
            self.state[name] += sum(a.update[name] * (a.weight / total) for a in accepted)
        self.tracker.changed(block.index)

    def summary_extra(self) -> dict[str, Any]:
        """The per-turn costs the method is about."""
        ok = [d for d in self.deliveries if d.ok]
        seen: set[int] = set()
        first, later = [], []
        for d in self.deliveries:  # a node's first message carries what it lacks of the model
            if d.ok:
                (later if d.node in seen else first).append(d.bytes_down)
            seen.add(d.node)
        sizes = [
            sum(self.state[n].numel() for n in self.layout.blocks[b].params)
            for b in self.layout.trainable
        ]

        def mean(xs: list[float]) -> float | None:
            return sum(xs) / len(xs) if xs else None

        return {
            "blocks": [self.layout.blocks[b].name for b in self.layout.trainable],
            "trainable_params_per_client": max(sizes),
            "total_params_synced": sum(t.numel() for t in self.state.values()),
            "full_model_bytes": self.full_model_bytes,
            "download_bytes_per_turn": {
                "first_mean": mean(first),
                "later_mean": mean(later),
                "later_max": max(later) if later else None,
                "later_share_of_full_model": (
                    mean(later) / self.full_model_bytes if later else None
                ),
            },
            "upload_bytes_per_turn": mean([d.bytes_up for d in ok]),
            "client_turn_train_s_mean": mean([d.train_s for d in ok]),
            "client_peak_mem_bytes_mean": mean([d.peak_mem for d in ok]),
            "client_train_mem_bytes_mean": mean([d.train_mem for d in ok]),
            "turns": len(self.deliveries),
            "turns_failed": sum(1 for d in self.deliveries if not d.ok),
            "client_steps_total": len(ok) * self.config.train.local_steps,
        }
