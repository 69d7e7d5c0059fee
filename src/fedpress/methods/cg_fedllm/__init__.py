"""CG-FedLLM (SPEC section 1; docs/cg_fedllm.md): LoRA-FedAvg whose uplink is a learned
autoencoder's latent, pre-trained on recorded updates (TGAP, `tgap`) and used during
federated fine-tuning (FAF, `server` and `client`)."""

from __future__ import annotations

from fedpress.methods.cg_fedllm import client, server, tgap
from fedpress.methods.cg_fedllm.settings import AutoencoderConfig, check
from fedpress.methods.lora_fedavg import client as lora_client
from fedpress.registry import EVALUATE, Method, register
from fedpress.task import build_task


def codec_label(config: dict) -> str:
    autoencoder = config.get("autoencoder") or {}
    rate = autoencoder.get("compression")
    uplink = f"AE {autoencoder.get('arch', '?')}" + (f" 1/{rate}" if rate else "")
    return f"{uplink} / {config.get('downlink_codec', 'none')}"


METHOD = register(
    Method(
        name="cg-fedllm",
        about="LoRA updates uploaded through a learned autoencoder, pre-trained by TGAP",
        # No uplink_codec: the uplink is the autoencoder ([autoencoder]).
        reads=("lora", "autoencoder", "downlink_codec", "codec", "federation", "privacy"),
        section=("autoencoder", AutoencoderConfig),
        server=server.build_server,
        client_task=build_task,
        client={
            "": client.train,
            EVALUATE: lora_client.evaluate,
            tgap.PHASE: tgap.client_tgap,
        },
        validate=check,
        codec_label=codec_label,
        server_files=("autoencoder.checkpoint", "autoencoder.snapshots_from"),
    )
)
