"""Fed-full, client side: receive the whole model, train every parameter, send the change."""

from __future__ import annotations

import torch
from flwr.app import Context, Message

from fedpress.accounting import stopwatch
from fedpress.config import RunConfig
from fedpress.flower import node, protocol
from fedpress.methods.fed_full.task import build_full_task


def train(msg: Message, context: Context, config: RunConfig) -> Message:
    server_round = int(msg.content[protocol.INSTRUCTIONS][protocol.SERVER_ROUND])
    partition = node.partition_id(context, config)
    task = build_full_task(config)
    data = node.share(task, partition)
    with stopwatch() as download_codec:
        global_state = node.receive_global(msg, context, task)
        task.set_adapter(global_state)
    with node.training_memory(task.device) as memory:
        result = task.train_round(
            data,
            server_round,
            steps=config.train.local_steps,
            seed=node.train_seed(config, server_round, partition),
        )
    with stopwatch() as upload_codec:
        # The change, computed into the received copy: a full model is large, no extra copy.
        params = dict(task.model.named_parameters())
        delta = {
            name: torch.sub(params[name].detach().to("cpu", torch.float32), start, out=start)
            for name, start in global_state.items()
        }
        codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
        update = node.encode_uplink(context, codec, delta)
    codec_s = download_codec["s"] + upload_codec["s"]
    return node.reply(msg, update, result, memory, codec_s, partition)
