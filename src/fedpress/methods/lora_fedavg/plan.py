"""LoRA-FedAvg's plan (`fedpress plan`): its rounds' messages and its client's memory, from
the model on the meta device. FFA-LoRA, fed-full and Fed-SB are LoRA-FedAvg's server and
client on another task, so they plan through `plan_rounds` with their own trainable set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from flwr.app import ArrayRecord, Message

from fedpress.codecs import Codec, ErrorFeedback
from fedpress.config import RunConfig
from fedpress.flower import planning, protocol
from fedpress.plan import MemoryPlan, MethodPlan, Planner


@dataclass
class Rounds:
    """The rounds of a LoRA-FedAvg-shaped run, and the largest train message a client got."""

    traffic: dict[int, planning.Traffic] = field(default_factory=dict)
    participants: dict[int, int] = field(default_factory=dict)
    largest_down: int = 0


def plan(planner: Planner) -> MethodPlan:
    model = planner.lora_model()
    return plan_lora_shaped(planner, model, {n: 0.0 for n in trainable(model) if "lora_B" in n})


def trainable(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """The trainable tensors' shapes: the state a LoRA-FedAvg-shaped run sends both ways."""
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def plan_lora_shaped(
    planner: Planner, model: torch.nn.Module, initial_fills: dict[str, float]
) -> MethodPlan:
    """The plan of LoRA-FedAvg's server and client on `model` (its trainable tensors are the
    global state; `initial_fills`: those constant at round 0, LoRA's zero B)."""
    rounds = plan_rounds(planner, trainable(model), initial_fills)
    return MethodPlan(rounds.traffic, lora_memory(planner, model, rounds), rounds.participants)


def lora_memory(
    planner: Planner, model: torch.nn.Module, rounds: Rounds, extra: int = 0
) -> MemoryPlan:
    """What a LoRA-FedAvg client holds beside the model: the seeded initial state and the
    received one (fp32 each), the downlink view and the uplink codec's residual (in
    Context.state) where those codecs keep them, and `extra` bytes of the method's own."""
    config = planner.config
    state = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    copies = 2 + (config.downlink_codec != "none") + _keeps_residual(config)
    return planner.memory(model, held=copies * state + extra, messages=rounds.largest_down)


def _keeps_residual(config: RunConfig) -> bool:
    codec = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
    return isinstance(codec, ErrorFeedback)


def plan_rounds(
    planner: Planner,
    shapes: dict[str, tuple[int, ...]],
    initial_fills: dict[str, float],
    downlink_extra: Callable[[int, int], tuple[dict, object]] | None = None,
    uplink: Callable[[int], tuple[object, object]] | None = None,
    more_instructions: Callable[[int], dict] | None = None,
) -> Rounds:
    """LoRA-FedAvg's rounds: each sampled client gets the global state (whole, or its change
    through the downlink codec) and sends its change through the uplink codec.

    What a method built on it adds: `downlink_extra(round, client)` -> (records, key) sent
    beside the state (CG-FedLLM's autoencoder), `uplink(round)` -> (codec, key) in place of
    the configured codec, `more_instructions(round)` -> instruction entries."""
    config = planner.config
    sizes = planning.Exchanges()
    configured = protocol.make_codec(config.uplink_codec, config.codec, uplink=True)
    rounds = Rounds()
    for server_round in range(1, config.rounds + 1):
        traffic = rounds.traffic.setdefault(server_round, planning.Traffic())
        clients = planner.participants(server_round)
        rounds.participants[server_round] = len(clients)
        first = server_round == 1  # the state is still the seeded initial one
        codec, uplink_key = uplink(server_round) if uplink else (configured, None)
        instructions = more_instructions(server_round) if more_instructions else {}
        for client in clients:
            extra, extra_key = ({}, None)
            if downlink_extra is not None:
                extra, extra_key = downlink_extra(server_round, client)
            state = partial(global_state, config, shapes, initial_fills if first else None)
            sent = partial(_train_message, state, extra, server_round, instructions)
            answer = partial(_train_reply, config, codec, shapes, client)
            numbers = planning.int_bytes(server_round), planning.int_bytes(client)
            key = (first, *numbers, extra_key, uplink_key, *instructions)
            rounds.largest_down = max(rounds.largest_down, sizes.add(traffic, key, sent, answer))
    return rounds


def global_state(
    config: RunConfig, shapes: dict[str, tuple[int, ...]], fills: dict[str, float] | None
) -> dict[str, ArrayRecord]:
    """The state record of a train message (`LoraFedAvgServer.downlink_record`): the whole
    state, or its change since what the node holds through the downlink codec (all zero
    while the state is the initial one: `fills` given)."""
    if config.downlink_codec == "none":
        return {protocol.GLOBAL_ADAPTER: planning.tensors_record(shapes, fills)}
    codec = protocol.make_codec(config.downlink_codec, config.codec, uplink=False)
    return {protocol.GLOBAL_DELTA: planning.payload_record(codec, shapes, zero=fills is not None)}


def _train_message(
    state: Callable[[], dict], extra: dict, server_round: int, instructions: dict
) -> Message:
    content = protocol.train_content({**state(), **extra}, server_round, **instructions)
    return planning.instruction(content)


def _train_reply(
    config: RunConfig,
    codec: Codec,
    shapes: dict[str, tuple[int, ...]],
    client: int,
    message: Message,
) -> Message:
    update = planning.payload_record(codec, shapes)
    return planning.train_reply(message, update, config, client)
