"""ServerApp: runs the configured federated method through the federation loop.

Two ways in. In the simulation engine, `make_server_app` closes over the config the CLI
already validated. On the deployment engine, `app` reads the fedpress TOML named by the
run config key `config` (set in deploy/pyproject.toml or with `flwr run --run-config`); there
every node brings its own data (`data-path` in its node config) and the server's `data.source`
is only its own evaluation data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpress import lean_imports, registry
from fedpress.config import RunConfig, load_config
from fedpress.flower.loop import run_federation
from fedpress.run_files import wait_for_plots

# (grid, config, out_dir) -> summary: something else than a method's run (`fedpress tgap`).
Entry = Callable[[Grid, RunConfig, Path], dict[str, Any]]


def run_method(
    grid: Grid,
    config: RunConfig,
    out_dir: Path,
    parallel_clients: int,
    resume: bool = False,
    deployed: bool = False,
) -> dict[str, Any]:
    server = registry.get(config.method).server(config, out_dir)
    return run_federation(grid, server, parallel_clients, resume, deployed)


def make_server_app(
    config: RunConfig,
    out_dir: Path,
    parallel_clients: int,
    box: dict[str, Any],
    resume: bool = False,
    entry: Entry | None = None,
) -> ServerApp:
    """A ServerApp for the simulation engine; the summary (or the error) lands in `box`."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            if entry is not None:
                box["summary"] = entry(grid, config, out_dir)
            else:
                box["summary"] = run_method(grid, config, out_dir, parallel_clients, resume)
        except BaseException as exc:  # handed back to the CLI thread, which reports it
            box["error"] = exc
            raise

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from fedpress.flower.run_overrides import overrides

    # `flwr run --run-config 'config="..." rounds=50'`: the TOML, then its keys given there.
    config = load_config(str(context.run_config["config"]), overrides(context.run_config))
    lean_imports.skip_bitsandbytes(config.runtime.quantize)
    out = (
        str(context.run_config.get("out", ""))
        or f"runs/{config.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    resume = bool(context.run_config.get("resume", False))
    # On the deployment engine every client is its own machine (they all run at once) and
    # brings its own data: the server sends no path.
    try:
        run_method(
            grid,
            config,
            Path(out),
            parallel_clients=config.num_clients,
            resume=resume,
            deployed=True,
        )
    finally:
        wait_for_plots()
