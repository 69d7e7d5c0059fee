"""CG-FedLLM's plan (`fedpress plan`): TGAP in round 0 (each node's D1 snapshots up, fp16),
then LoRA-FedAvg's rounds whose uplink is the autoencoder's latent and whose first message
to a node (and the first after an adaptation) carries the autoencoder; an adaptation round's
clients send fp16 updates instead."""

from __future__ import annotations

from typing import Any

from fedpress.autoencoders import Layout, build_autoencoder
from fedpress.codecs import Codec, build_codec
from fedpress.codecs.autoencoder import AutoencoderCodec
from fedpress.flower import planning, protocol
from fedpress.flower.planning import PlannedArray, arrays_record
from fedpress.methods.cg_fedllm.server import (
    AE_META,
    AE_WEIGHTS,
    FULL_UPDATE,
    adapt_round,
    shipped_meta,
)
from fedpress.methods.cg_fedllm.tgap import TGAP_MESSAGE, tgap_reply
from fedpress.methods.lora_fedavg.plan import lora_memory, plan_rounds, trainable
from fedpress.plan import MethodPlan, Planner

# The input gain TGAP fits is a float with a full repr in the shipped JSON: a typical one.
TYPICAL_GAIN = 2 / 3


def plan(planner: Planner) -> MethodPlan:
    config = planner.config
    options = config.autoencoder
    model = planner.lora_model()
    shapes = trainable(model)
    width = Layout(shapes).width
    autoencoder = build_autoencoder(options.arch, options.compression, width)
    latent = AutoencoderCodec(autoencoder, shapes, TYPICAL_GAIN, options.latent_dtype)
    weights = {name: tuple(t.shape) for name, t in autoencoder.state_dict().items()}
    fp16 = build_codec("fp16")
    meta = {
        "arch": options.arch,
        "compression": options.compression,
        "latent_dtype": options.latent_dtype,
        "input_gain": TYPICAL_GAIN,
    }
    shipped: dict[int, int] = {}  # client -> autoencoder version it holds

    def downlink_extra(server_round: int, client: int) -> tuple[dict[str, Any], object]:
        # Version 1 from TGAP; each adaptation round installs the next one.
        version = 1 + sum(adapt_round(config, t) for t in range(1, server_round))
        if shipped.get(client) == version:
            return {}, None
        shipped[client] = version
        ae = {
            AE_WEIGHTS: planning.tensors_record(weights),
            AE_META: shipped_meta(meta, width, version),
        }
        return ae, ("autoencoder", len(str(version)))

    def uplink(server_round: int) -> tuple[Codec, object]:
        return (fp16, "fp16") if adapt_round(config, server_round) else (latent, "latent")

    def instructions(server_round: int) -> dict[str, bool]:
        return {FULL_UPDATE: True} if adapt_round(config, server_round) else {}

    rounds = plan_rounds(
        planner,
        shapes,
        {n: 0.0 for n in shapes if "lora_B" in n},
        downlink_extra,
        uplink,
        instructions,
    )
    if not options.checkpoint and not options.snapshots_from:
        rounds.traffic[0] = _tgap(planner, fp16, shapes)
    ae_bytes = 4 * sum(t.numel() for t in autoencoder.state_dict().values())
    # Beside LoRA-FedAvg's copies: the autoencoder in Context.state and built for the turn.
    memory = lora_memory(planner, model, rounds, 2 * ae_bytes)
    return MethodPlan(rounds.traffic, memory, rounds.participants)


def _tgap(planner: Planner, fp16: Codec, shapes: dict[str, tuple[int, ...]]) -> planning.Traffic:
    """TGAP's exchange: every node records `autoencoder.snapshots` changes, sent fp16."""
    traffic = planning.Traffic()
    size = fp16.max_payload_bytes(shapes)
    for client in range(planner.config.num_clients):
        sent = planning.instruction(protocol.train_content({}, 0), TGAP_MESSAGE)
        snapshots = arrays_record(
            {
                f"{i:05d}": PlannedArray("uint8", (size,))
                for i in range(planner.config.autoencoder.snapshots)
            }
        )
        traffic.add(sent, planning.reply(tgap_reply(snapshots, 1.0, 1.0, client), sent))
    return traffic
