"""FedCyBGD, client side: rebuild the model this node holds, train one block, reply.

What the node holds beyond the pretrained weights (`download.NodeView`: the blocks it
received, whether exactly, and how many downloads it applied) lives in `Context.state`, so a
node whose ClientApp process is new for every message (the deployment engine) keeps it.
"""

from __future__ import annotations

import json

from flwr.app import ConfigRecord, Context, Message

from fedpress.accounting import stopwatch
from fedpress.config import RunConfig
from fedpress.flower import node, protocol
from fedpress.methods.fedcybgd.blocks import BlockLayout
from fedpress.methods.fedcybgd.download import NodeView, decode_download
from fedpress.methods.fedcybgd.server import BLOCK, DROPPED, MODEL, SYNCS, TOKEN, TURN
from fedpress.methods.fedcybgd.turns import (
    cybgd_task,
    pruning_base,
    task_layout,
    train_block,
    turn_seed,
)
from fedpress.models import load_adapter_state

VIEW_TENSORS = "cybgd-view"
VIEW_META = "cybgd-view-meta"


def load_view(context: Context, layout: BlockLayout, token: str, syncs: int) -> NodeView:
    """This node's copy from Context.state, checked against what the server believes it holds."""
    meta = context.state.config_records.get(VIEW_META)
    held = meta is not None and str(meta["token"]) == token
    if syncs == 0 or not held:
        if syncs != 0:
            raise ValueError(
                f"block view out of sync: the server expects {syncs} earlier downloads, this "
                "node holds none"
            )
        return NodeView(token)
    view = NodeView(token, int(meta["syncs"]))
    tensors = protocol.record_to_tensors(context.state[VIEW_TENSORS])
    exact = {int(k): bool(v) for k, v in json.loads(str(meta["exact"])).items()}
    for block in layout.blocks:
        if block.index in exact:
            view.blocks[block.index] = {n: tensors[n] for n in block.params}
            view.exact[block.index] = exact[block.index]
    if view.syncs != syncs:
        raise ValueError(f"block view out of sync: holds {view.syncs} downloads, not {syncs}")
    return view


def save_view(context: Context, view: NodeView) -> None:
    tensors = {n: t for block in view.blocks.values() for n, t in block.items()}
    context.state[VIEW_TENSORS] = protocol.tensors_to_record(tensors)
    context.state[VIEW_META] = ConfigRecord(
        {
            "token": view.token,
            "syncs": view.syncs,
            "exact": json.dumps({str(k): v for k, v in view.exact.items()}),
        }
    )


def train(msg: Message, context: Context, config: RunConfig) -> Message:
    """One turn on a client."""
    instructions = msg.content[protocol.INSTRUCTIONS]
    partition = node.partition_id(context, config)
    task = cybgd_task(config)
    layout = task_layout(task)
    index = int(instructions[BLOCK])
    if index not in layout.trainable:
        raise ValueError(f"block {index} is not a trainable block")
    block = layout.blocks[index]
    dropped = [int(i) for i in json.loads(str(instructions[DROPPED]))]
    if block.layer in dropped or not all(0 <= i < layout.num_layers for i in dropped):
        raise ValueError(f"cannot drop layers {dropped} when training {block.name}")
    turn = int(instructions[TURN])
    data = node.share(context, config, task)
    with stopwatch() as download_codec:
        shapes = {n: tuple(t.shape) for n, t in task.initial_adapter.items()}
        base = pruning_base(config, task.initial_adapter)
        tensors, pruned = decode_download(msg.content[MODEL], shapes, base)
        view = load_view(context, layout, str(instructions[TOKEN]), int(instructions[SYNCS]))
        if not config.cybgd.delta_sync:
            kept = [b for b in layout.blocks if b.layer is None or b.layer not in dropped]
            missing = [n for b in kept for n in b.params if n not in tensors]
            if missing:
                raise ValueError(f"download lacks {len(missing)} tensors, e.g. {missing[0]}")
        view.apply(layout, tensors, pruned)
        if not view.exact.get(block.index, True):
            raise ValueError(f"responsible block {block.name} did not arrive exact")
        for b in layout.blocks:
            load_adapter_state(
                task.model,
                view.blocks.get(b.index) or {n: task.initial_adapter[n] for n in b.params},
            )
        if config.cybgd.delta_sync:
            save_view(context, view)  # without delta sync nothing is kept between turns
        del tensors, view
    result, delta, memory = train_block(
        task, layout, block, data, turn, turn_seed(config, turn, partition), dropped
    )
    with stopwatch() as upload_codec:
        codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        update = node.encode_uplink(context, codec, delta, f"{protocol.UPLINK_CODEC_STATE}:{index}")
    codec_s = download_codec["s"] + upload_codec["s"]
    return node.reply(msg, update, result, memory, codec_s, partition, **{BLOCK: index, TURN: turn})
