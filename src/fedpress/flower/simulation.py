"""Run a federated method in-process on Flower's simulation engine (the default)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from fedpress.config import RunConfig
from fedpress.errors import FedpressError
from fedpress.flower.client_app import app as fedpress_client_app
from fedpress.flower.server_app import Entry, make_server_app
from fedpress.flower.sizing import client_cpus, parallel_slots
from fedpress.run_files import wait_for_plots


def simulate(
    config: RunConfig,
    out_dir: Path,
    verbose: bool = False,
    resume: bool = False,
    client_app: ClientApp | None = None,
    entry: Entry | None = None,
) -> dict[str, Any]:
    """Run `config` on the simulation engine; `client_app` replaces fedpress's own (tests
    use it to put misbehaving clients into a real run)."""
    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count()
    client_gpus = config.federation.client_gpus if gpus else 0.0
    if gpus and client_gpus == 0.0:
        client_gpus = 1.0 / max(1, parallel_slots(config))  # share the GPU among concurrent clients
    backend_config: dict[str, Any] = {
        "client_resources": {
            "num_cpus": client_cpus(config),
            "num_gpus": client_gpus,
        },
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "include_dashboard": False,
            "logging_level": logging.INFO if verbose else logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    box: dict[str, Any] = {}
    server_app = make_server_app(config, out_dir, parallel_slots(config), box, resume, entry)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    run_simulation(
        server_app=server_app,
        client_app=client_app or fedpress_client_app,
        num_supernodes=config.num_clients,
        backend_config=backend_config,
        verbose_logging=verbose,
    )
    wait_for_plots()  # curves.png was drawn while Flower shut its clients down
    if "error" in box:
        error = box["error"]
        if isinstance(error, FedpressError):
            raise error
        raise FedpressError(
            f"the federated run failed: {error.__class__.__name__}: {error}"
        ) from error
    if "summary" not in box:
        raise FedpressError("the federated run ended without a result (see the log above)")
    return box["summary"]
