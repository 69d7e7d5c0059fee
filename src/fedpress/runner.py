"""Run any config: the one dispatch that `fedpress run`, `fedpress compare` and the benchmarks
share.

Methods that train in one process (the centralized references) are listed in
`LOCAL_METHODS`; every other method is federated and goes through the Flower simulation,
whose ServerApp picks the method's recipe from `server_app.FEDERATED_METHODS`. Adding a
method is one entry in one of those two tables.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fedpress.config import RunConfig

# method -> "module:function" taking (config, out_dir, resume=...) and returning the summary.
LOCAL_METHODS = {
    "centralized": "fedpress.methods.centralized:run_centralized",
    "centralized-full": "fedpress.methods.centralized_full:run_centralized_full",
    "centralized-cyclic": "fedpress.methods.centralized_full:run_centralized_cyclic",
}


def preflight(config: RunConfig) -> None:
    """Fail fast, in this process, on what would otherwise fail inside every client."""
    from fedpress.data import build_splits
    from fedpress.models import config_of

    config_of(config.model)
    build_splits(config.data, config.num_clients, config.seed)


def run_config(
    config: RunConfig, out_dir: Path, *, resume: bool = False, verbose: bool = False
) -> dict[str, Any]:
    """Run `config` into `out_dir` (continuing its checkpoint when `resume`); the summary."""
    out_dir = Path(out_dir)
    if config.method in LOCAL_METHODS:
        module, _, function = LOCAL_METHODS[config.method].partition(":")
        recipe = getattr(importlib.import_module(module), function)
        return recipe(config, out_dir, resume=resume)
    from fedpress.flower.simulation import simulate

    return simulate(config, out_dir, verbose=verbose, resume=resume)
