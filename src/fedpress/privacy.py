"""Client-level differential privacy on the aggregate (Geyer et al., 2017; McMahan et al., 2018).

Sampling: each client takes part in a round independently with probability
q = `federation.fraction_train`, drawn from secret randomness on the server
(`flower.sampling.Sampler`): Poisson sampling, exactly what the accountant assumes, and a
participation list nobody can derive from the public seed.

Mechanism per round, on the server, after decoding: clip every accepted client update to L2
norm C (the *decoded* update: a decoder's output is not bounded by what the client clipped),
sum, divide by the expected number of participants K = q * N (fixed: a failed or rejected
client counts as a zero update, so K never depends on the data), and add Gaussian noise
N(0, (sigma * C / K)^2) to every coordinate; a round nobody was sampled in releases the noise
alone. Adding or removing one client changes the sum by at most C, the mean by at most C / K:
a Gaussian mechanism with noise multiplier sigma. Epsilon comes from Google's `dp-accounting`
(RDP or PLD) for the Poisson-subsampled Gaussian with rate q over the run's rounds.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from typing import Any

import torch

from fedpress.config import PrivacyConfig, RunConfig
from fedpress.errors import FedpressError

log = logging.getLogger("fedpress")


def update_norm(update: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


def clip_update(update: Mapping[str, torch.Tensor], clip_norm: float) -> dict[str, torch.Tensor]:
    """`update` scaled down to L2 norm <= clip_norm (over all tensors together)."""
    norm = update_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {name: t * factor for name, t in update.items()}


def _event(noise_multiplier: float, sampling_rate: float):  # noqa: ANN202
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def _accountant(kind: str):  # noqa: ANN202
    if kind == "pld":
        from dp_accounting.pld import pld_privacy_accountant

        return pld_privacy_accountant.PLDAccountant()
    from dp_accounting.rdp import rdp_privacy_accountant

    return rdp_privacy_accountant.RdpAccountant()


def compute_epsilon(
    noise_multiplier: float, sampling_rate: float, rounds: int, delta: float, accountant: str
) -> float:
    """(epsilon, delta)-DP of `rounds` rounds of the subsampled Gaussian mechanism."""
    if rounds == 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    acc = _accountant(accountant)
    acc.compose(_event(noise_multiplier, sampling_rate), rounds)
    return float(acc.get_epsilon(delta))


def calibrate_noise(
    target_epsilon: float, sampling_rate: float, rounds: int, delta: float, accountant: str
) -> float:
    """Smallest noise multiplier (to 1e-3 relative) whose epsilon is at most the target."""
    low, high = 1e-2, 1.0
    while compute_epsilon(high, sampling_rate, rounds, delta, accountant) > target_epsilon:
        high *= 2
        if high > 1e4:
            raise FedpressError(f"privacy.target_epsilon = {target_epsilon} cannot be reached")
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        if compute_epsilon(mid, sampling_rate, rounds, delta, accountant) > target_epsilon:
            low = mid
        else:
            high = mid
    return high


def expected_clients(config: RunConfig) -> float:
    """K = q * N: the expected number of clients Poisson sampling draws per round."""
    return config.num_clients * config.federation.fraction_train


class PrivateAggregator:
    """Server side of the mechanism; counts the rounds it released for the accountant."""

    def __init__(self, config: RunConfig) -> None:
        self.options: PrivacyConfig = config.privacy
        self.clients = expected_clients(config)
        self.num_clients = config.num_clients
        self.sampling_rate = config.federation.fraction_train
        if self.options.target_epsilon > 0:
            self.noise_multiplier = calibrate_noise(
                self.options.target_epsilon,
                self.sampling_rate,
                config.rounds,
                self.options.delta,
                self.options.accountant,
            )
        else:
            self.noise_multiplier = self.options.noise_multiplier
        self.rounds_released = 0
        log.info(
            "client-level DP: C=%g, K=%.2f, q=%.3f, sigma=%.4f, planned epsilon %.3f",
            self.options.clip_norm,
            self.clients,
            self.sampling_rate,
            self.noise_multiplier,
            self.epsilon(config.rounds),
        )

    @property
    def noise_std(self) -> float:
        """Per-coordinate noise std on the mean update."""
        return self.noise_multiplier * self.options.clip_norm / self.clients

    def epsilon(self, rounds: int) -> float:
        return compute_epsilon(
            self.noise_multiplier,
            self.sampling_rate,
            rounds,
            self.options.delta,
            self.options.accountant,
        )

    def aggregate(
        self,
        updates: list[Mapping[str, torch.Tensor]],
        server_round: int,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> dict[str, torch.Tensor]:
        """Noisy sum of the clipped updates over K (a round with none releases noise alone)."""
        if len(updates) > self.num_clients:
            raise ValueError(f"{len(updates)} updates from {self.num_clients} clients")
        clipped = [clip_update(u, self.options.clip_norm) for u in updates]
        # Secret randomness: noise derived from the (public) config seed could be subtracted.
        generator = torch.Generator().manual_seed(secrets.randbits(63))
        out = {}
        for name in sorted(shapes):
            total = torch.zeros(shapes[name])
            for update in clipped:
                total += update[name]
            noise = torch.randn(total.shape, generator=generator) * self.noise_std
            out[name] = total / self.clients + noise
        self.rounds_released = max(self.rounds_released, server_round)
        return out

    def summary(self, covers: list[str]) -> dict[str, Any]:
        """The guarantee, with `covers`: what of the clients' messages the epsilon accounts
        for (every upload of the run must be in it, or the run must not have sent it)."""
        return {
            "dp_epsilon": self.epsilon(self.rounds_released),
            "dp_covers": covers,
            "dp_delta": self.options.delta,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_clip_norm": self.options.clip_norm,
            "dp_expected_clients_per_round": self.clients,
            "dp_sampling_rate": self.sampling_rate,
            "dp_accountant": self.options.accountant,
        }
