"""FedCyBGD's config section, `[cybgd]`, and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpress.errors import FedpressError, check_choice

if TYPE_CHECKING:
    from fedpress.config import RunConfig


@dataclass
class CybgdConfig:
    """FedCyBGD (docs/fedcybgd.md): one block per client turn, in a cycle; compressed download."""

    # ascending | descending | random | aggregated (FedBAvg: several clients per block, averaged)
    allocation: str = "ascending"
    # aggregated: clients that train the same block from the same snapshot in one turn.
    clients_per_block: int = 2
    # Client turns per round; 0 = max(blocks, clients), so every block is trained once a round.
    turns_per_round: int = 0
    # Let the embeddings and the head (final norm, untied LM head) take turns as blocks too.
    include_embeddings: bool = False
    # Train only LoRA parameters ([lora]) inside the responsible block instead of the block.
    peft: bool = False
    # Download compression of the frozen rest (the responsible block always travels exact):
    # share of frozen decoder layers left out (the client runs the model without them) ...
    layer_drop_ratio: float = 0.0
    # ... share of the smallest-magnitude entries of frozen layer weight matrices zeroed and
    # sent sparsely (bitmask + kept values); full-parameter mode only.
    prune_ratio: float = 0.0
    # What pruning keeps: "weights" (the paper: the largest frozen weights) or "delta" (the
    # largest entries of the change since the pretrained weights; needs delta_sync, under which
    # clients hold those weights). Same bytes; "delta" keeps the frozen rest nearly exact.
    prune_target: str = "weights"
    # Clients hold the pretrained weights and receive only blocks changed since they last synced.
    delta_sync: bool = True


def check_cybgd(config: RunConfig) -> None:
    cybgd = config.cybgd
    allocations = ("ascending", "descending", "random", "aggregated")
    check_choice("cybgd.allocation", cybgd.allocation, allocations)
    if not 1 <= cybgd.clients_per_block <= config.num_clients:
        raise FedpressError("config key 'cybgd.clients_per_block' must be in [1, num_clients]")
    if cybgd.turns_per_round < 0:
        raise FedpressError("config key 'cybgd.turns_per_round' must be >= 0")
    for key in ("layer_drop_ratio", "prune_ratio"):
        if not 0.0 <= getattr(cybgd, key) < 1.0:
            raise FedpressError(f"config key 'cybgd.{key}' must be in [0, 1)")
    check_choice("cybgd.prune_target", cybgd.prune_target, ("weights", "delta"))
    if cybgd.prune_target == "delta" and not cybgd.delta_sync:
        raise FedpressError(
            "cybgd.prune_target = 'delta' needs cybgd.delta_sync = true: a client without "
            "delta sync is not assumed to hold the pretrained weights the change is from"
        )
