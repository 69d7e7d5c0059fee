"""FedKSeed's config section, `[fedkseed]`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpress.errors import FedpressError

if TYPE_CHECKING:
    from fedpress.config import RunConfig

log = logging.getLogger("fedpress")

# Zeroth-order steps move every weight along a random direction: rates that suit LoRA
# (fedpress's default 3e-3) make the loss climb within a round.
LARGEST_USUAL_LR = 1e-4


@dataclass
class FedKSeedConfig:
    # K: the shared pool of seeds; a local step draws one and perturbs every weight along
    # the Gaussian direction z it generates. The paper's pool is 4,096 (1,024 in its scripts).
    seeds: int = 1024
    # The perturbation scale of the two-point estimate (L(w + eps z) - L(w - eps z)) / 2 eps.
    eps: float = 5e-4
    # FedKSeed-Pro: draw seeds by the size of their past (aggregated) scalars instead of
    # uniformly, p = softmax of the min-max-normalised mean |scalar| of each seed.
    pro: bool = False
    # A seed's scalars enter Pro's score clipped to this size.
    pro_clip: float = 1000.0


def check(config: RunConfig) -> None:
    ks = config.fedkseed
    if ks.seeds < 1:
        raise FedpressError(f"config key 'fedkseed.seeds' must be >= 1, got {ks.seeds}")
    if not ks.eps > 0:
        raise FedpressError(f"config key 'fedkseed.eps' must be > 0, got {ks.eps}")
    if not ks.pro_clip > 0:
        raise FedpressError("config key 'fedkseed.pro_clip' must be > 0")
    # Every node rebuilds the global model by replaying lr x scalar x z: the rate must be the
    # same for every step ever taken, and nothing else may move the weights.
    if config.train.lr_schedule != "constant":
        raise FedpressError(
            "fedkseed replays its updates as lr x scalar x z: train.lr_schedule must be "
            f"'constant', got {config.train.lr_schedule!r}"
        )
    if config.train.weight_decay:
        raise FedpressError("fedkseed's replay has no weight decay: set train.weight_decay = 0")
    if config.train.lr > LARGEST_USUAL_LR:
        log.warning(
            "fedkseed: train.lr = %g is far above zeroth-order rates (1e-7 to 1e-5; 1e-5 is "
            "the better of 1e-6 and 1e-5 on SmolLM2, docs/frontier.md): the loss may diverge",
            config.train.lr,
        )
