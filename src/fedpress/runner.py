"""Run any config: the one dispatch that `fedpress run`, `fedpress compare` and the benchmarks
share.

Methods that train in one process (the centralized references) run their `local` recipe;
every other method is federated and goes through the Flower simulation, whose ServerApp
builds the method's server from the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedpress import registry
from fedpress.config import RunConfig
from fedpress.errors import FedpressError


def preflight(config: RunConfig) -> None:
    """Fail fast, in this process, on what would otherwise fail inside every client: the data
    first (no torch to import for that), then the model's config."""
    from fedpress.data import build_splits

    splits = build_splits(config.data, config.num_clients, config.seed)
    largest = max(len(share) for share in splits.client_shares)
    if registry.get(config.method).local is None and largest < config.train.batch_size:
        raise FedpressError(
            f"train.batch_size = {config.train.batch_size} is more than any client's share "
            f"({largest} training examples at most, {config.num_clients} clients): every "
            "client would fail; lower train.batch_size or num_clients"
        )
    from fedpress.models import config_of
    from fedpress.tracking import check_installed

    config_of(config.model)
    check_installed(config)


def run_config(
    config: RunConfig, out_dir: Path, *, resume: bool = False, verbose: bool = False
) -> dict[str, Any]:
    """Run `config` into `out_dir` (continuing its checkpoint when `resume`); the summary."""
    from fedpress.run_files import wait_for_plots

    out_dir = Path(out_dir)
    method = registry.get(config.method)
    if resume:  # a bad checkpoint is refused before anything starts or writes
        from fedpress.checkpoint import load_checkpoint

        load_checkpoint(out_dir)
    try:
        if method.local is not None:
            return method.local(config, out_dir, resume)
        from fedpress.flower.simulation import simulate

        return simulate(config, out_dir, verbose=verbose, resume=resume)
    finally:
        wait_for_plots()
