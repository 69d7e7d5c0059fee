"""CG-FedLLM (SPEC section 1; docs/cg_fedllm.md): LoRA-FedAvg whose uplink is a learned
autoencoder's latent, pre-trained on recorded updates (TGAP, `tgap`) and used during
federated fine-tuning (FAF, `server` and `client`)."""

from __future__ import annotations

from fedpress.methods.cg_fedllm.cli import analyze_arguments, tgap_arguments
from fedpress.methods.cg_fedllm.settings import TGAP_PHASE, AutoencoderConfig, check
from fedpress.methods.lora_fedavg import LORA_CLIENT
from fedpress.registry import EVALUATE, Command, Lazy, Method, register


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
        reads=(
            "lora",
            "autoencoder",
            "downlink_codec",
            "codec",
            "federation",
            "privacy",
            "server_optimizer",
            "aggregation",
        ),
        section=("autoencoder", AutoencoderConfig),
        server=Lazy("fedpress.methods.cg_fedllm.server:build_server"),
        client_task=Lazy("fedpress.task:build_task"),
        client={
            "": Lazy("fedpress.methods.cg_fedllm.client:train"),
            EVALUATE: LORA_CLIENT[EVALUATE],
            TGAP_PHASE: Lazy("fedpress.methods.cg_fedllm.tgap:client_tgap"),
        },
        validate=check,
        codec_label=codec_label,
        quantized_base=True,
        report_tables=Lazy("fedpress.methods.cg_fedllm.report:tables"),
        plan=Lazy("fedpress.methods.cg_fedllm.plan:plan"),
        server_files=("autoencoder.checkpoint", "autoencoder.snapshots_from"),
        commands=(
            Command(
                "tgap",
                "CG-FedLLM pre-training alone: collect snapshots, train",
                tgap_arguments,
                Lazy("fedpress.methods.cg_fedllm.cli:tgap"),
            ),
            Command(
                "ae-analyze",
                "SNR and noise robustness of a trained autoencoder",
                analyze_arguments,
                Lazy("fedpress.methods.cg_fedllm.cli:analyze"),
            ),
        ),
    )
)
