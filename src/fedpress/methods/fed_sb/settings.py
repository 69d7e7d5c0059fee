"""Fed-SB's config section, `[fedsb]`: the one-off phase that computes the frozen A and B."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpress.errors import FedpressError

if TYPE_CHECKING:
    from fedpress.config import RunConfig

INIT_PHASE = "fedsb_init"  # a client's first-step factors: message type "train.fedsb_init"
INSTALL_PHASE = "fedsb_install"  # the frozen A and B, once per node: "train.fedsb_install"


INITS = ("gradient", "random")


@dataclass
class FedSBConfig:
    # Where A and B come from. "gradient": the paper's, the truncated SVD of the first
    # full fine-tuning step on some clients' data (a one-off upload of about one LoRA update,
    # outside any DP guarantee). "random": random orthonormal A and B from the run's seed
    # and R0 = 0 (the model starts as the base), no client involved, nothing uploaded.
    init: str = "gradient"
    # Clients that compute the first-step gradient A and B come from (drawn from the run's
    # seed); each sends the rank-r factors of its step, about one LoRA-FedAvg upload.
    init_clients: int = 1
    # Training examples of its share each of them takes the gradient on (batches of
    # train.batch_size); the paper's scripts use 50-550.
    init_examples: int = 64
    # The size of the first step A, B and R0 come from, `-init_lr sign(G)`: its direction
    # sets A and B; its size sets R0, so the model starts where the step would take it. The
    # reference scales Adam's first step down to lr / (warmup x steps), ~7.5e-7 in its
    # arithmetic runs; at train.lr (3e-4) the rank-r step alone cost SmolLM2 10 points on
    # SST-2 before any training (converged protocol, seed 0: 72 % -> 62 %).
    init_lr: float = 1e-6
    # Power iterations of the randomized truncated SVD (torch.svd_lowrank's niter).
    svd_iterations: int = 10
    # Codec of the one-off factors both ways (a client's step factors up, A and B down).
    # Exact either way: the server and every node install the same decoded A and B.
    one_off_codec: str = "none"


def check(config: RunConfig) -> None:
    sb = config.fedsb
    if sb.init not in INITS:
        raise FedpressError(
            f"config key 'fedsb.init' = {sb.init!r} is not one of {', '.join(INITS)}"
        )
    if config.privacy.enabled and sb.init == "gradient":
        raise FedpressError(
            "privacy.enabled with fed-sb needs fedsb.init = 'random': the gradient init's "
            "one-off upload (a client's first step) is outside the DP guarantee"
        )
    if config.runtime.quantize != "none" and sb.init == "gradient":
        raise FedpressError(
            "runtime.quantize with fed-sb needs fedsb.init = 'random': the gradient init takes "
            "the gradient of the base weights, which a quantized base does not have"
        )
    if not 1 <= sb.init_clients <= config.num_clients:
        raise FedpressError(
            f"config key 'fedsb.init_clients' must be in [1, num_clients = {config.num_clients}]"
            f", got {sb.init_clients}"
        )
    if sb.init_examples < 1:
        raise FedpressError(f"config key 'fedsb.init_examples' must be >= 1: {sb.init_examples}")
    if not sb.init_lr > 0:
        raise FedpressError(f"config key 'fedsb.init_lr' must be > 0, got {sb.init_lr}")
    if sb.svd_iterations < 0:
        raise FedpressError("config key 'fedsb.svd_iterations' must be >= 0")
    from fedpress.codecs.registry import CODEC_NAMES

    if sb.one_off_codec not in CODEC_NAMES:
        raise FedpressError(
            f"config key 'fedsb.one_off_codec' = {sb.one_off_codec!r} is not one of "
            f"{', '.join(CODEC_NAMES)}"
        )
    if config.lora.dropout:
        raise FedpressError(
            "fed-sb trains R between frozen A and B; lora.dropout is not supported (set it to 0)"
        )
