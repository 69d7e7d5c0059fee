"""LoRA-FedAvg, client side: load the global adapter, train `train.local_steps` steps on this
node's share, send the change of the adapter (SPEC section 1) through the uplink codec."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import Context, Message

from fedpress import registry
from fedpress.accounting import stopwatch
from fedpress.codecs import Codec
from fedpress.config import RunConfig
from fedpress.flower import node, protocol
from fedpress.memory import training_memory
from fedpress.task import LoraTask, Shapes

# (message, context, config, shapes) -> the codec this round's change goes through.
UplinkChoice = Callable[[Message, Context, RunConfig, Shapes], Codec]


def method_task(config: RunConfig) -> LoraTask:
    """The model this node trains, as the run's method builds it (cached per process)."""
    return registry.get(config.method).client_task(config)


def configured_uplink(msg: Message, context: Context, config: RunConfig, shapes: Shapes) -> Codec:
    return protocol.make_codec(config.uplink_codec, config.codec, uplink=True)


def train(
    msg: Message,
    context: Context,
    config: RunConfig,
    uplink: UplinkChoice = configured_uplink,
) -> Message:
    """One round on this node, on the task its method builds (`Method.client_task`: FFA-LoRA's
    trains B only, fed-full's every parameter). `uplink` is what CG-FedLLM changes: its uplink
    is the shipped autoencoder."""
    task = method_task(config)
    server_round = int(msg.content[protocol.INSTRUCTIONS][protocol.SERVER_ROUND])
    partition = node.partition_id(context, config)
    data = node.share(context, config, task)
    with stopwatch() as download_codec:
        global_state = node.receive_global(msg, context, task)
    task.set_adapter(global_state)
    with training_memory(task.device) as memory:
        result = task.train_round(
            data,
            server_round,
            steps=config.train.local_steps,
            seed=node.train_seed(config, server_round, partition),
        )
    with stopwatch() as upload_codec:
        # The change, computed into the received copy (no copy of a full model's worth).
        params = dict(task.model.named_parameters())
        delta = {
            name: torch.sub(params[name].detach().to("cpu", torch.float32), start, out=start)
            for name, start in global_state.items()
        }
        if config.privacy.enabled and config.privacy.client_clip:
            from fedpress.privacy import clip_update

            delta = clip_update(delta, config.privacy.clip_norm)
        codec = uplink(msg, context, config, task.adapter_shapes())
        update = node.encode_uplink(context, codec, delta)
    codec_s = download_codec["s"] + upload_codec["s"]
    return node.reply(msg, update, result, memory, codec_s, partition)


def evaluate(msg: Message, context: Context, config: RunConfig) -> Message:
    """Score the global state the server sent on this node's local held-out data."""
    task = method_task(config)
    data = node.local_eval(context, config, task)
    if not data:
        raise ValueError("this node has no held-out data (eval-path in its --node-config)")
    task.set_adapter(protocol.record_to_tensors(msg.content[protocol.GLOBAL_ADAPTER]))
    return node.eval_reply(msg, task.evaluate(data))
