"""Shared pieces of the command line (the core's and the methods' commands): the config
arguments, and a terminal kept to progress bars, warnings and the result table."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings


def quiet(verbose: bool = False) -> None:
    """Keep the terminal to progress bars, warnings and the result table."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    # Flower resets its console handler to INFO when a simulation starts; a logger filter holds.
    logging.getLogger("flwr").addFilter(_terse_flower)
    if "transformers" in sys.modules:  # imported already: it has read the variables above
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _terse_flower(record: logging.LogRecord) -> bool:
    """Flower's warnings and errors, less two kinds: the simulation engine's tracebacks of a
    ClientApp that raised (the reply carries the error, and fedpress prints one line per
    failed client from it) and the deprecation notice of `run_simulation`, which fedpress
    calls and a user cannot change. --verbose shows both."""
    if record.levelno < logging.WARNING:
        return False
    if record.funcName in ("worker", "process_message") and "/fleet/vce/" in record.pathname:
        return False
    return "`run_simulation` function is deprecated" not in record.getMessage()


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A config file and `--set` overrides: what every command that builds a config takes."""
    parser.add_argument("config", nargs="?", help="TOML config (default: the built-in demo)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model=tiny-llama --set train.lr=1e-3",
    )
