"""FedCyBGD's plan (`fedpress plan`): the run's turns with the server's own allocation
(`turns.plan_round`) and download bookkeeping (`download.SyncTracker`) walked over the model
on the meta device, each turn's messages sized as sent; and the peak of a client training
the lowest trainable block (the one with the most layers above it to save activations for)
holding the largest view and download of any turn (an upper bound: two turns' worst)."""

from __future__ import annotations

import uuid

import torch
from flwr.app import Message

from fedpress.accounting import message_nbytes
from fedpress.flower import planning, protocol
from fedpress.methods.fedcybgd.blocks import BlockLayout, find_blocks
from fedpress.methods.fedcybgd.download import SyncTracker, planned_download
from fedpress.methods.fedcybgd.server import BLOCK, TURN, turn_content
from fedpress.methods.fedcybgd.turns import plan_round
from fedpress.plan import MemoryPlan, MethodPlan, Planner


def plan(planner: Planner) -> MethodPlan:
    config = planner.config
    cybgd = config.cybgd
    model, layout = model_and_blocks(planner)
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    tracker = SyncTracker(
        layout, cybgd.delta_sync, cybgd.layer_drop_ratio, cybgd.prune_ratio, not cybgd.peft
    )
    uplink = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
    token = uuid.uuid4().hex
    block_bytes = [4 * sum(state[n].numel() for n in b.params) for b in layout.blocks]
    sizes: dict[tuple, int] = {}
    rounds: dict[int, planning.Traffic] = {}
    participants: dict[int, int] = {}
    most_viewed = largest_down = 0  # a client's view (Context.state), a turn's download
    for server_round in range(1, config.rounds + 1):
        traffic = rounds.setdefault(server_round, planning.Traffic())
        clients = planner.participants(server_round)
        turns = plan_round(cybgd, layout.trainable, clients, server_round, config.seed)
        participants[server_round] = len({p for t in turns for p in t.partitions})
        for turn in turns:
            block = layout.blocks[turn.block]
            shapes = {n: tuple(state[n].shape) for n in block.params}
            for node in turn.partitions:
                download = tracker.plan(node, block, state)
                content = turn_content(
                    planned_download(download, tracker.prune_ratio),
                    server_round,
                    turn,
                    download,
                    tracker,
                    node,
                    token,
                )
                sent = planning.instruction(content)
                instructions = len(content[protocol.INSTRUCTIONS].deflate())
                key = (tuple(download.tensors), tuple(download.pruned), instructions)
                down = _sized(sizes, key, sent)
                update = planning.payload_record(uplink, shapes)
                extra = {BLOCK: turn.block, TURN: turn.number}
                answer = planning.train_reply(sent, update, config, node, **extra)
                traffic.down.append(down)
                up_key = ("up", turn.block, *map(planning.int_bytes, (turn.number, node)))
                traffic.up.append(_sized(sizes, up_key, answer))
                tracker.delivered(node, download)
                if cybgd.delta_sync:  # the node keeps what it received
                    view = sum(block_bytes[b] for b in tracker.held.get(node, {}))
                    most_viewed = max(most_viewed, view)
                largest_down = max(largest_down, down)
            tracker.changed(block.index)
    memory = block_memory(planner, model, layout, most_viewed, largest_down)
    return MethodPlan(rounds, memory, participants)


def block_memory(
    planner: Planner, model: torch.nn.Module, layout: BlockLayout, viewed: int, down: int
) -> MemoryPlan:
    """The client training the lowest trainable block (alone trainable, an fp32 master copy
    computing in the model's dtype: `turns.only_block_trainable`), beside the seeded initial
    state (fp32) and the `viewed` bytes it keeps, having received `down` bytes."""
    initial = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    lowest = set(layout.blocks[layout.trainable[0]].params)
    for name, param in model.named_parameters():
        param.requires_grad_(name in lowest)
    return planner.memory(model, held=initial + viewed, messages=down, fp32_master=True)


def model_and_blocks(planner: Planner) -> tuple[torch.nn.Module, BlockLayout]:
    """The model a FedCyBGD client holds (the LoRA task in PEFT mode) and its blocks."""
    cybgd = planner.config.cybgd
    model = planner.lora_model() if cybgd.peft else planner.base_model()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return model, find_blocks(model, names, cybgd.include_embeddings)


def _sized(sizes: dict[tuple, int], key: tuple, message: Message) -> int:
    """A message's bytes, sized once per `key` (what makes one turn's message differ)."""
    if key not in sizes:
        sizes[key] = message_nbytes(message)
    return sizes[key]
