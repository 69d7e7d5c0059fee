"""How the server combines the round's decoded client updates (`[aggregation]`).

The mean (example-weighted, FedAvg's) is the default. A member whose update is well formed but
harmful (scaled by 50, sign-flipped, trained on flipped labels) passes every reply check and
enters the mean with full weight; the robust rules bound what such a member can do:

- `median`: the coordinate-wise median of the updates (Yin et al. 2018; Flower's FedMedian:
  unweighted, the mean of the two middle values for an even count).
- `trimmed_mean`: per coordinate, the `trim_fraction` largest and smallest values cut, the
  rest averaged (Flower's FedTrimmedAvg: unweighted).
- `krum` / `multikrum` (Blanchard et al. 2017): each update scored by the summed squared
  distances to its n - f - 2 nearest others (f = `attackers`); Krum takes the best-scored
  update, Multi-Krum the example-weighted mean of the `keep` best (0: n - f).

Norm bounding (`norm_bound`, with any rule) first scales every update whose L2 norm over all
its tensors exceeds the bound down to it: the bound is `max_norm`, or the median of the
round's norms.

Memory. The mean, unbounded or with a fixed bound, is taken as the replies arrive
(`RunningMean`, `stream = true`): the server holds a float64 sum per tensor (two fp32
copies of the update's size) and the one reply it is reading, whatever the number of
clients. The other rules need every update of the round at once, so the server holds them
all (n copies); beyond them, the median and the trimmed mean stack and sort one tensor of
every update at a time, Krum one stacked tensor and an n x n distance table
(benchmarks/aggregation_cost.py, benchmarks/server_memory.py measure it).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from fedpress.config import AggregationConfig

Update = dict[str, torch.Tensor]


def aggregate(
    config: AggregationConfig, updates: Sequence[Update], weights: Sequence[float]
) -> Update:
    """The round's combined update under `config`'s norm bound and rule."""
    if config.norm_bound != "none":
        updates = bounded(updates, config)
    if config.rule == "mean":
        return weighted_mean(updates, weights)
    if config.rule in ("krum", "multikrum"):
        chosen = krum_choice(updates, config.attackers)
        keep = 1 if config.rule == "krum" else (config.keep or len(updates) - config.attackers)
        best = chosen[: max(1, min(keep, len(updates)))]
        return weighted_mean([updates[i] for i in best], [weights[i] for i in best])
    combine = median if config.rule == "median" else trimmed(config.trim_fraction)
    return {name: combine(torch.stack([u[name] for u in updates])) for name in updates[0]}


def streams(config: AggregationConfig) -> bool:
    """Whether the rule can take the updates one at a time, as they arrive."""
    return config.stream and config.rule == "mean" and config.norm_bound in ("none", "fixed")


class RunningMean:
    """The example-weighted mean of updates added one at a time. The sum is kept in float64
    and rounded to fp32 once, at the end: the result does not depend on the order the replies
    arrived in (beyond float64 rounding, far below fp32's)."""

    def __init__(self, config: AggregationConfig) -> None:
        self.config = config
        self.sums: Update = {}
        self.total = 0.0

    def add(self, update: Update, weight: float) -> None:
        if self.config.norm_bound == "fixed":
            (update,) = bounded([update], self.config)
        for name, tensor in update.items():
            if name in self.sums:
                self.sums[name].add_(tensor, alpha=weight)
            else:
                self.sums[name] = tensor.double() * weight
        self.total += weight

    def result(self) -> Update:
        return {name: (s / self.total).float() for name, s in self.sums.items()}


def weighted_mean(updates: Sequence[Update], weights: Sequence[float]) -> Update:
    total = sum(weights)
    return {
        name: sum(u[name] * (w / total) for u, w in zip(updates, weights, strict=True))
        for name in updates[0]
    }


def norm(update: Update) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in update.values())))


def bounded(updates: Sequence[Update], config: AggregationConfig) -> list[Update]:
    norms = [norm(u) for u in updates]
    bound = config.max_norm if config.norm_bound == "fixed" else statistics.median(norms)
    return [
        u if n <= bound else {k: t * (bound / n) for k, t in u.items()}
        for u, n in zip(updates, norms, strict=True)
    ]


def median(stacked: torch.Tensor) -> torch.Tensor:
    ordered = stacked.sort(dim=0).values
    mid = ordered.shape[0] // 2
    return ordered[mid] if ordered.shape[0] % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def trimmed(fraction: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def combine(stacked: torch.Tensor) -> torch.Tensor:
        cut = int(fraction * stacked.shape[0])
        ordered = stacked.sort(dim=0).values
        return ordered[cut : stacked.shape[0] - cut].mean(dim=0)

    return combine


def krum_choice(updates: Sequence[Update], attackers: int) -> list[int]:
    """Indices of the updates from best to worst Krum score. The squared distances are summed
    tensor by tensor, so the rule never holds more than one tensor of every update at once."""
    distances = torch.zeros(len(updates), len(updates), dtype=torch.float64)
    for name in updates[0]:
        stacked = torch.stack([u[name].reshape(-1) for u in updates])
        distances += torch.cdist(stacked, stacked).double() ** 2
    closest = max(1, len(updates) - attackers - 2)
    scores = []
    for i in range(len(updates)):
        others = torch.cat([distances[i, :i], distances[i, i + 1 :]])
        scores.append(float(others.sort().values[:closest].sum()) if len(others) else 0.0)
    return sorted(range(len(updates)), key=lambda i: (scores[i], i))
