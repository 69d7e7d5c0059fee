"""ServerApp: runs the configured federated method.

Two ways in. In the simulation engine, `make_server_app` closes over the config the CLI
already validated. On the deployment engine, `app` reads the fedpress TOML named by the
run config key `config` (set in deploy/pyproject.toml or with `flwr run --run-config`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpress.config import RunConfig, load_config
from fedpress.methods.cg_fedllm import run_cg_fedllm
from fedpress.methods.fed_full import run_fed_full
from fedpress.methods.fedcybgd import run_fedcybgd
from fedpress.methods.lora_fedavg import run_lora_fedavg

FEDERATED_METHODS = {
    "lora-fedavg": run_lora_fedavg,
    "fedcybgd": run_fedcybgd,
    "fed-full": run_fed_full,
    "cg-fedllm": run_cg_fedllm,
}


def run_method(
    grid: Grid, config: RunConfig, out_dir: Path, parallel_clients: int, resume: bool = False
) -> dict[str, Any]:
    return FEDERATED_METHODS[config.method](grid, config, out_dir, parallel_clients, resume)


def make_server_app(
    config: RunConfig,
    out_dir: Path,
    parallel_clients: int,
    box: dict[str, Any],
    resume: bool = False,
    entry: Callable[..., dict[str, Any]] | None = None,
) -> ServerApp:
    """A ServerApp for the simulation engine; the summary (or the error) lands in `box`.
    `entry` replaces the configured method (e.g. `fedpress tgap` runs only that phase)."""
    server_app = ServerApp()
    runner = entry or run_method

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            box["summary"] = runner(grid, config, out_dir, parallel_clients, resume)
        except BaseException as exc:  # handed back to the CLI thread, which reports it
            box["error"] = exc
            raise

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = load_config(str(context.run_config["config"]))
    out = (
        str(context.run_config.get("out", ""))
        or f"runs/{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    resume = bool(context.run_config.get("resume", False))
    # On the deployment engine every client is its own machine: they all run at once.
    run_method(grid, config, Path(out), parallel_clients=config.num_clients, resume=resume)
