"""The robust rules against Flower's own implementations of the same rules (its legacy
strategies' `aggregate_*`), and what each does against a scaled-update attacker."""

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import (
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from fedpress.aggregation import RunningMean, aggregate, norm, streams
from fedpress.config import AggregationConfig, load_config
from fedpress.errors import FedpressError

SHAPES = {"a": (3, 4), "b": (5,)}


def updates(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {k: torch.randn(s, generator=generator) for k, s in SHAPES.items()} for _ in range(count)
    ]


def as_flower(ups, weights) -> list:
    return [([u[k].numpy() for k in SHAPES], int(w)) for u, w in zip(ups, weights, strict=True)]


def close(mine: dict, flower: list) -> None:
    for key, theirs in zip(SHAPES, flower, strict=True):
        torch.testing.assert_close(mine[key], torch.from_numpy(np.asarray(theirs, np.float32)))


@pytest.mark.parametrize("count", [4, 5])
def test_rules_match_flowers_on_the_same_updates(count):
    ups, weights = updates(count), [8, 3, 5, 1, 7][:count]
    results = as_flower(ups, weights)
    close(aggregate(AggregationConfig("median"), ups, weights), aggregate_median(results))
    trimmed = AggregationConfig("trimmed_mean", trim_fraction=0.25)
    close(aggregate(trimmed, ups, weights), aggregate_trimmed_avg(results, 0.25))
    close(aggregate(AggregationConfig("krum"), ups, weights), aggregate_krum(results, 1, 0))
    multikrum = AggregationConfig("multikrum", attackers=1, keep=2)
    close(aggregate(multikrum, ups, weights), aggregate_krum(results, 1, 2))


def test_the_mean_is_the_example_weighted_mean_bit_for_bit():
    ups, weights = updates(3), [8.0, 3.0, 5.0]
    mean = aggregate(AggregationConfig(), ups, weights)
    for key in SHAPES:
        expected = sum(u[key] * (w / 16.0) for u, w in zip(ups, weights, strict=True))
        assert torch.equal(mean[key], expected)


@pytest.mark.parametrize("bound", ["none", "fixed"])
def test_the_streamed_mean_is_the_held_mean_in_any_arrival_order(bound):
    """What the server folds in reply by reply (the default for the mean) equals the mean of
    the held updates, and does not depend on the order the replies arrived in."""
    ups, weights = updates(5), [8.0, 3.0, 5.0, 1.0, 7.0]
    config = AggregationConfig(norm_bound=bound, max_norm=1.5)
    assert streams(config) and not streams(AggregationConfig(stream=False))
    held = aggregate(config, ups, weights)
    results = []
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        running = RunningMean(config)
        for i in order:
            running.add(ups[i], weights[i])
        results.append(running.result())
        for key in SHAPES:
            torch.testing.assert_close(results[-1][key], held[key], rtol=1e-6, atol=1e-7)
    assert all(torch.equal(results[0][key], results[1][key]) for key in SHAPES)


def test_norm_bounds_scale_long_updates_down_and_keep_their_direction():
    ups = updates(4)
    ups[2] = {k: v * 50 for k, v in ups[2].items()}
    for bound, limit in (("fixed", 0.5), ("median", float(np.median([norm(u) for u in ups])))):
        config = AggregationConfig("mean", norm_bound=bound, max_norm=0.5)
        mean = aggregate(config, ups, [1, 1, 1, 1])
        scaled = [
            {k: v * min(1.0, limit / norm(u)) for k, v in u.items()} for u in ups
        ]  # each one's norm at most the bound, its direction the same
        for key in SHAPES:
            torch.testing.assert_close(mean[key], sum(u[key] for u in scaled) / 4)


def test_a_scaled_attacker_moves_the_mean_far_and_the_robust_rules_little():
    honest = updates(4, seed=1)
    attacker = {k: v * -50 for k, v in updates(1, seed=2)[0].items()}
    honest_mean = aggregate(AggregationConfig(), honest, [1] * 4)

    def error(config: AggregationConfig) -> float:
        result = aggregate(config, [*honest, attacker], [1] * 5)
        return norm({k: result[k] - honest_mean[k] for k in SHAPES})

    plain = error(AggregationConfig())
    for config in (
        AggregationConfig("median"),
        AggregationConfig("trimmed_mean", trim_fraction=0.2),
        AggregationConfig("krum"),
        AggregationConfig("multikrum"),
        AggregationConfig("mean", norm_bound="median"),
    ):
        assert error(config) < plain / 5, config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["aggregation.rule=medain"], "did you mean 'median'"),
        (["aggregation.trim_fraction=0.5"], r"\[0, 0.5\)"),
        (["aggregation.attackers=-1"], "aggregation.attackers"),
        (["privacy.enabled=true", "aggregation.rule=median"], "must be 'mean'"),
        (["method=fedkseed", "aggregation.rule=median"], "not used by method 'fedkseed'"),
        (["method=fedcybgd", "aggregation.norm_bound=fixed"], "not used by method 'fedcybgd'"),
    ],
)
def test_settings_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(FedpressError, match=message):
        load_config(None, overrides)
