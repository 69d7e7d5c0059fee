"""CG-FedLLM (SPEC section 1; docs/cg_fedllm.md): LoRA-FedAvg whose uplink is a learned
autoencoder's latent, pre-trained on recorded updates (TGAP, `tgap`) and used during
federated fine-tuning (FAF, `server` and `client`)."""

from __future__ import annotations

from fedpress.config import RunConfig, validate_autoencoder
from fedpress.errors import FedpressError
from fedpress.methods.cg_fedllm import client, server, tgap
from fedpress.registry import Method, register


def check(config: RunConfig) -> None:
    validate_autoencoder(config.autoencoder)
    ae = config.autoencoder
    if config.privacy.enabled and (not ae.checkpoint or ae.adapt_every):
        raise FedpressError(
            "privacy.enabled with cg-fedllm needs autoencoder.checkpoint (an autoencoder "
            "trained without this run's clients) and autoencoder.adapt_every = 0: TGAP and "
            "adaptation upload raw updates that the epsilon would not cover"
        )
    if config.data.holdout_fraction == 0.0:
        config.data.holdout_fraction = 0.3  # SPEC: D1 (TGAP) : D2 (FAF) = 3 : 7


def codec_label(config: dict) -> str:
    autoencoder = config.get("autoencoder") or {}
    return f"AE {autoencoder.get('arch', '?')} / {config.get('downlink_codec', 'none')}"


METHOD = register(
    Method(
        name="cg-fedllm",
        about="LoRA updates uploaded through a learned autoencoder, pre-trained by TGAP",
        # No uplink_codec: the uplink is the autoencoder ([autoencoder]).
        reads=("lora", "autoencoder", "downlink_codec", "codec", "federation", "privacy"),
        server=server.build_server,
        client={"": client.train, tgap.PHASE: tgap.client_tgap},
        validate=check,
        codec_label=codec_label,
    )
)
