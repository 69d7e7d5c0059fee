"""Fed-SB, client side: keep the shipped A and B in Context.state, install them, then
LoRA-FedAvg's round (or evaluation) on the task whose trainable tensors are the R's."""

from __future__ import annotations

from flwr.app import Context, Message

from fedpress.config import RunConfig
from fedpress.flower import protocol
from fedpress.methods.fed_sb.init import one_off_codec
from fedpress.methods.fed_sb.server import FROZEN, installed
from fedpress.methods.fed_sb.task import build_sb_task, frozen_shapes, install_frozen
from fedpress.methods.lora_fedavg import client as lora_client
from fedpress.task import LoraTask


def install(msg: Message, context: Context, config: RunConfig) -> Message:
    """Keep A and B (a deployed node's next messages run in new processes) and check them."""
    if FROZEN not in msg.content.array_records:
        raise ValueError(f"no '{FROZEN}' record in the install message")
    context.state[FROZEN] = msg.content[FROZEN]
    with_frozen(context, config)
    return Message(installed(), reply_to=msg)


def with_frozen(context: Context, config: RunConfig) -> LoraTask:
    """This process's task with the run's A and B in place."""
    if FROZEN not in context.state.array_records:
        raise ValueError("fed-sb: this node has not received the frozen A and B")
    task = build_sb_task(config)
    codec = one_off_codec(config)
    install_frozen(
        task, protocol.decode_record(codec, context.state[FROZEN], frozen_shapes(task.model))
    )
    return task


def train(msg: Message, context: Context, config: RunConfig) -> Message:
    with_frozen(context, config)
    return lora_client.train(msg, context, config)


def evaluate(msg: Message, context: Context, config: RunConfig) -> Message:
    with_frozen(context, config)
    return lora_client.evaluate(msg, context, config)
