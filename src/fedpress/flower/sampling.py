"""Which partitions take part in a round: seeded, or (differential privacy) Poisson from
secret randomness."""

from __future__ import annotations

import random
from typing import Any

from fedpress.config import RunConfig


class Sampler:
    """Which partitions take part in a round.

    Without privacy: `federation.fraction_train` of them (at least one), drawn from the run's
    seed over partition ids, so the same seed picks the same clients in every run whatever
    node ids the nodes got. With differential privacy: each independently with probability
    `fraction_train` from secret randomness, the Poisson sampling the accountant assumes; a
    participation list derivable from the public seed would void its amplification.
    """

    def __init__(self, config: RunConfig) -> None:
        self.fraction = config.federation.fraction_train
        self.secret = config.privacy.enabled
        self.rng: random.Random = (
            random.SystemRandom() if self.secret else random.Random(config.seed)
        )

    def sample(self, partitions: list[int]) -> list[int]:
        if self.secret:
            return [p for p in sorted(partitions) if self.rng.random() < self.fraction]
        count = max(1, round(len(partitions) * self.fraction))
        return sorted(self.rng.sample(sorted(partitions), count))

    def state_dict(self) -> dict[str, Any]:
        if self.secret:
            return {}
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state and not self.secret:
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
