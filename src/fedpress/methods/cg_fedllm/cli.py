"""CG-FedLLM's own commands: `fedpress tgap` (the pre-training phase alone) and `fedpress
ae-analyze` (what a trained autoencoder keeps). Registered in this package's `__init__`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedpress.console import add_config_arguments, quiet
from fedpress.errors import FedpressError


def tgap_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--out", help="output folder (default: runs/tgap-<time>)")
    parser.add_argument("--snapshots", help="train on these saved snapshots instead of collecting")
    parser.add_argument("--verbose", action="store_true")


def analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder with autoencoder.safetensors/.json")
    parser.add_argument("--snapshots", help="snapshots file (default: the folder's)")
    parser.add_argument("--sigmas", default="5e-5,5e-4,5e-3,5e-2,5e-1")


def analyze(args: argparse.Namespace) -> int:
    from fedpress.autoencoders import training

    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s]
    except ValueError:
        raise FedpressError(f"--sigmas expects comma-separated numbers: {args.sigmas}") from None
    report = training.analyze(Path(args.folder), sigmas, args.snapshots and Path(args.snapshots))
    print(json.dumps(report, indent=2))
    return 0


def tgap(args: argparse.Namespace) -> int:
    from fedpress.autoencoders import training
    from fedpress.config import load_config
    from fedpress.methods.cg_fedllm import tgap as phase
    from fedpress.runner import preflight

    config = load_config(args.config, args.overrides)
    if config.method != "cg-fedllm":
        raise FedpressError('`fedpress tgap` is CG-FedLLM\'s phase: set method = "cg-fedllm"')
    out_dir = Path(args.out or f"runs/tgap-{time.strftime('%Y%m%d-%H%M%S')}")
    quiet(args.verbose)
    preflight(config)
    if args.snapshots:
        from fedpress.task import build_task

        shapes = build_task(config).adapter_shapes()
        meta = training.retrain_from_snapshots(config, args.snapshots, out_dir, shapes)[1]
    else:
        from fedpress.flower.simulation import simulate

        meta = simulate(config, out_dir, verbose=args.verbose, entry=phase.run_tgap_only)
    val = meta["validation"]
    print(
        f"{meta['arch']} 1/{meta['compression']}: validation MSE {val['mse']:.3g}, "
        f"cosine {val['cosine']:.4f}, SNR {val['snr_db']:.2f} dB; "
        f"saved in {out_dir / 'autoencoder'}"
    )
    return 0
