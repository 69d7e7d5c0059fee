"""`fedpress` command line. User mistakes end in one line and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path

from fedpress.errors import FedpressError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedpress", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one federated (or centralized) fine-tuning job")
    run.add_argument("config", nargs="?", help="TOML config (default: the built-in demo)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set model=tiny-llama --set train.lr=1e-3",
    )
    run.add_argument("--out", help="output folder (default: runs/<method>-<time>)")
    run.add_argument(
        "--resume", metavar="RUN_FOLDER", help="continue a stopped run from its last complete round"
    )
    run.add_argument("--verbose", action="store_true", help="show Flower and Ray logs")
    show = sub.add_parser("config", help="print the resolved config as TOML")
    show.add_argument("config", nargs="?")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tgap = sub.add_parser("tgap", help="CG-FedLLM pre-training alone: collect snapshots, train")
    tgap.add_argument("config", nargs="?")
    tgap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tgap.add_argument("--out", help="output folder (default: runs/tgap-<time>)")
    tgap.add_argument("--snapshots", help="train on these saved snapshots instead of collecting")
    tgap.add_argument("--verbose", action="store_true")
    analyze = sub.add_parser("ae-analyze", help="SNR and noise robustness of a trained autoencoder")
    analyze.add_argument("folder", help="folder with autoencoder.safetensors/.json")
    analyze.add_argument("--snapshots", help="snapshots file (default: the folder's)")
    analyze.add_argument("--sigmas", default="5e-5,5e-4,5e-3,5e-2,5e-1")
    args = parser.parse_args(argv)
    try:
        if args.command in ("tgap", "ae-analyze"):
            from fedpress.autoencoders.cli import main as ae_main

            return ae_main(args)
        if args.command == "config":
            from fedpress.config import load_config

            print(load_config(args.config, args.overrides).to_toml(), end="")
            return 0
        return _run(args)
    except FedpressError as exc:
        print(f"fedpress: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedpress: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from fedpress.config import load_config

    if args.resume:
        if args.config or args.overrides or args.out:
            raise FedpressError("--resume takes the run folder only: its config.toml is the run")
        out_dir = Path(args.resume)
        config = load_config(out_dir / "config.toml")
    else:
        config = load_config(args.config, args.overrides)
        out_dir = Path(args.out or f"runs/{config.method}-{time.strftime('%Y%m%d-%H%M%S')}")
    quiet(args.verbose)
    _preflight(config)
    resume = bool(args.resume)
    if config.method == "centralized":
        from fedpress.methods.centralized import run_centralized

        summary = run_centralized(config, out_dir, resume=resume)
    else:
        from fedpress.flower.simulation import simulate

        summary = simulate(config, out_dir, verbose=args.verbose, resume=resume)
    from fedpress.reporting import format_summary_table

    print(format_summary_table(summary))
    return 0


def _preflight(config) -> None:  # noqa: ANN001
    """Fail fast, in this process, on what would otherwise fail inside every client."""
    from fedpress.data import build_splits
    from fedpress.models import config_of

    config_of(config.model)
    build_splits(config.data, config.num_clients, config.seed)


def quiet(verbose: bool = False) -> None:
    """Keep the terminal to progress bars, warnings and the result table."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    # Flower resets its console handler to INFO when a simulation starts; a logger filter holds.
    logging.getLogger("flwr").addFilter(lambda record: record.levelno >= logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
