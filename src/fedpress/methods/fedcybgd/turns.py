"""What one FedCyBGD turn is, on either side: the model it works on, which block each client
trains in a round (the allocation), and training one block with everything else frozen.

Shared by the federated method and the `centralized-cyclic` reference, so both walk the same
turns with the same block training.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from fedpress.config import RunConfig
from fedpress.memory import training_memory
from fedpress.methods.fedcybgd.blocks import Block, BlockLayout, find_blocks, without_layers
from fedpress.methods.fedcybgd.settings import CybgdConfig
from fedpress.task import LoraTask, build_task
from fedpress.training import Encoded, TrainResult, train_steps

# --------------------------------------------------------------------------- the task


def cybgd_task(config: RunConfig) -> LoraTask:
    """The full model (every parameter synced) or, in PEFT mode, the LoRA task."""
    if config.cybgd.peft:
        return build_task(config)
    from fedpress.methods.fed_full.task import build_full_task

    return build_full_task(config)


def pruning_base(
    config: RunConfig, pretrained: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor] | None:
    """What pruned downloads are a change from (cybgd.prune_target = "delta"), or None when the
    weights themselves are pruned; server and client both ask here, so they agree."""
    return pretrained if config.cybgd.prune_target == "delta" else None


_LAYOUTS: dict[str, BlockLayout] = {}


def task_layout(task: LoraTask) -> BlockLayout:
    key = task.config.to_json()
    if key not in _LAYOUTS:
        _LAYOUTS.clear()
        _LAYOUTS[key] = find_blocks(
            task.model, task.initial_adapter, task.config.cybgd.include_embeddings
        )
    return _LAYOUTS[key]


# --------------------------------------------------------------------------- allocation


@dataclass(frozen=True)
class Turn:
    number: int  # counts turns over the whole run (seeds, LR schedule)
    block: int  # index into BlockLayout.blocks
    partitions: tuple[int, ...]  # who trains it (several: aggregated)


def turns_per_round(cybgd: CybgdConfig, blocks: int, clients: int) -> int:
    if cybgd.turns_per_round:
        return cybgd.turns_per_round
    return blocks if cybgd.allocation == "aggregated" else max(blocks, clients)


def plan_round(
    cybgd: CybgdConfig,
    trainable: Sequence[int],
    partitions: Sequence[int],
    server_round: int,
    seed: int,
) -> list[Turn]:
    """The round's turns. Client t mod K takes turn t; its block by the allocation:
    ascending t mod B, descending the reverse, random a seeded draw per turn; aggregated
    trains block t mod B with `clients_per_block` clients at once, cycling through clients."""
    partitions = sorted(partitions)
    blocks, clients = len(trainable), len(partitions)
    count = turns_per_round(cybgd, blocks, clients)
    first = (server_round - 1) * count
    rng = random.Random(seed * 7_919 + server_round)
    turns = []
    for t in range(count):
        if cybgd.allocation == "aggregated":
            m = min(cybgd.clients_per_block, clients)
            who = tuple(partitions[(t * m + j) % clients] for j in range(m))
            block = trainable[t % blocks]
        else:
            who = (partitions[t % clients],)
            position = {
                "ascending": t % blocks,
                "descending": blocks - 1 - t % blocks,
                "random": rng.randrange(blocks),
            }[cybgd.allocation]
            block = trainable[position]
        turns.append(Turn(first + t, block, who))
    return turns


# --------------------------------------------------------------------------- block training


@contextlib.contextmanager
def only_block_trainable(model: torch.nn.Module, names: Iterable[str]) -> Iterator[list]:
    """Freeze everything but `names`; lower-precision block parameters get an fp32 master
    copy for the turn (training under autocast in the model's dtype)."""
    wanted = set(names)
    params = dict(model.named_parameters())
    for param in params.values():
        param.requires_grad_(False)
    block = [params[n] for n in wanted]
    low = {p.dtype for p in block if p.dtype != torch.float32}
    originals = [p.dtype for p in block]
    for p in block:
        p.data = p.data.to(torch.float32)
        p.requires_grad_(True)
    device = block[0].device
    autocast = (
        torch.autocast(device.type, dtype=next(iter(low))) if low else contextlib.nullcontext()
    )
    try:
        with autocast:
            yield block
    finally:
        for p, dtype in zip(block, originals, strict=True):
            p.requires_grad_(False)
            p.data = p.data.to(dtype)


def train_block(
    task: LoraTask,
    layout: BlockLayout,
    block: Block,
    data: Sequence[Encoded],
    turn: int,
    seed: int,
    dropped: Sequence[int] = (),
) -> tuple[TrainResult, dict[str, torch.Tensor], dict[str, int]]:
    """Train `block` for `train.local_steps` steps: (result, change of the block, memory:
    `peak` resident with the model, `bytes` added by training)."""
    config = task.config
    params = dict(task.model.named_parameters())
    start = {n: params[n].detach().to("cpu", torch.float32).clone() for n in block.params}
    total_turns = config.rounds * turns_per_round(
        config.cybgd, len(layout.trainable), config.num_clients
    )
    train = config.train
    with (
        training_memory(task.device) as memory,
        only_block_trainable(task.model, block.params),
        without_layers(task.model, layout, dropped),
    ):
        result = train_steps(
            task.model,
            data,
            steps=train.local_steps,
            batch_size=train.batch_size,
            lr=train.lr,
            pad_id=task.pad_id,
            seed=seed,
            schedule=train.lr_schedule,
            schedule_offset=turn * train.local_steps,
            schedule_total=total_turns * train.local_steps,
            weight_decay=train.weight_decay,
            max_grad_norm=train.max_grad_norm,
        )
        end = {n: params[n].detach().to("cpu", torch.float32).clone() for n in block.params}
    return result, {n: end[n] - start[n] for n in block.params}, memory


def turn_seed(config: RunConfig, turn: int, partition: int) -> int:
    """The batch-order seed of one turn (the same formula as a LoRA round's)."""
    return config.seed * 1_000_003 + turn * 1_009 + partition
