"""`fedpress tgap` and `fedpress ae-analyze` (dispatched from fedpress.cli)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedpress.errors import FedpressError


def main(args: argparse.Namespace) -> int:
    from fedpress.autoencoders import training
    from fedpress.methods.cg_fedllm import tgap

    if args.command == "ae-analyze":
        try:
            sigmas = [float(s) for s in args.sigmas.split(",") if s]
        except ValueError:
            raise FedpressError(
                f"--sigmas expects comma-separated numbers: {args.sigmas}"
            ) from None
        report = training.analyze(
            Path(args.folder), sigmas, args.snapshots and Path(args.snapshots)
        )
        print(json.dumps(report, indent=2))
        return 0
    from fedpress.cli import quiet
    from fedpress.config import load_config
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

        meta = simulate(config, out_dir, verbose=args.verbose, entry=tgap.run_tgap_only)
    val = meta["validation"]
    print(
        f"{meta['arch']} 1/{meta['compression']}: validation MSE {val['mse']:.3g}, "
        f"cosine {val['cosine']:.4f}, SNR {val['snr_db']:.2f} dB; "
        f"saved in {out_dir / 'autoencoder'}"
    )
    return 0
