"""CG-FedLLM's config section, `[autoencoder]`, and its checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpress.errors import FedpressError, check_choice

if TYPE_CHECKING:
    from fedpress.config import RunConfig

TGAP_PHASE = "tgap"  # TGAP's ClientApp handler: message type "train.tgap"


@dataclass
class AutoencoderConfig:
    """CG-FedLLM's learned uplink codec (docs/cg_fedllm.md): architecture, rate, TGAP, FAF."""

    # resnet3 | cnn1d | uformer0 | uformer1 | uformer2 (U-Former with 0/1/2 transformer blocks)
    # | rowlinear (a learned linear code per layout row; docs/cg_fedllm.md)
    arch: str = "resnet3"
    # Input numbers per latent number (64 = the paper's 1/64); must divide 4096.
    compression: int = 64
    # fp16 | fp32: dtype of the latent on the wire.
    latent_dtype: str = "fp16"
    # A trained autoencoder (folder with autoencoder.safetensors + autoencoder.json); empty:
    # cg-fedllm runs TGAP first inside the run.
    checkpoint: str = ""
    # TGAP snapshots recorded before (a snapshots.safetensors, or the run or `fedpress tgap`
    # folder holding autoencoder/snapshots.safetensors): skip recording, train this architecture
    # on them. In a compare matrix, "{compare}" stands for the compare folder, so every
    # architecture can train on the snapshots the first cg-fedllm variant recorded.
    snapshots_from: str = ""
    # FAF: frozen (the paper), or adapted every `adapt_every` rounds (0 = frozen): those rounds'
    # clients send fp16 updates, the server fine-tunes the autoencoder on them and re-ships it.
    adapt_every: int = 0
    adapt_steps: int = 50
    # auto (on) | on | off: error feedback around the autoencoder codec (clients then also
    # receive the decoder, to know what the server will reconstruct).
    error_feedback: str = "auto"
    # TGAP: each client trains LoRA on its D1 share and records its adapter change every
    # `snapshot_steps` steps (0 = train.local_steps), `snapshots` times.
    snapshots: int = 8
    snapshot_steps: int = 0
    # Autoencoder training on the pooled snapshots.
    val_fraction: float = 0.25
    train_steps: int = 300
    batch_size: int = 8
    # Training crops (pixels per side, a multiple of 64): convolutions share weights.
    crop: int = 256
    lr: float = 1e-3
    # Input scaling: per-tensor RMS times a gain fitted at TGAP so that this quantile of
    # |x / rms| lands at the tanh ceiling (values beyond are clamped; error feedback resends them).
    scale_quantile: float = 0.999


AUTOENCODER_ARCHS = ("resnet3", "cnn1d", "uformer0", "uformer1", "uformer2", "rowlinear")


def validate_autoencoder(ae: AutoencoderConfig) -> None:
    check_choice("autoencoder.arch", ae.arch, AUTOENCODER_ARCHS)
    check_choice("autoencoder.latent_dtype", ae.latent_dtype, ("fp16", "fp32"))
    check_choice("autoencoder.error_feedback", ae.error_feedback, ("auto", "on", "off"))
    if ae.compression < 1 or 4096 % ae.compression:
        raise FedpressError(
            f"config key 'autoencoder.compression' must divide 4096 (e.g. 16, 32, 64, 128), "
            f"got {ae.compression}"
        )
    for key, value, low in (
        ("autoencoder.snapshots", ae.snapshots, 2),
        ("autoencoder.snapshot_steps", ae.snapshot_steps, 0),
        ("autoencoder.train_steps", ae.train_steps, 1),
        ("autoencoder.batch_size", ae.batch_size, 1),
        ("autoencoder.adapt_every", ae.adapt_every, 0),
        ("autoencoder.adapt_steps", ae.adapt_steps, 1),
        ("autoencoder.crop", ae.crop, 64),
    ):
        if value < low:
            raise FedpressError(f"config key '{key}' must be >= {low}, got {value}")
    if ae.crop % 64:
        raise FedpressError(f"config key 'autoencoder.crop' must be a multiple of 64: {ae.crop}")
    if not 0.0 < ae.val_fraction < 1.0:
        raise FedpressError("config key 'autoencoder.val_fraction' must be in (0, 1)")
    if not 0.5 <= ae.scale_quantile <= 1.0:
        raise FedpressError("config key 'autoencoder.scale_quantile' must be in [0.5, 1]")
    if ae.lr <= 0:
        raise FedpressError("config key 'autoencoder.lr' must be > 0")


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
