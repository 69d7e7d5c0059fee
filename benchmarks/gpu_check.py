"""The GPU paths, checked in one short script for the sessions that are lent a CUDA device:
lora-fedavg on SmolLM2-135M with a bf16 base and with a 4-bit (NF4) base, several simulated
clients sharing the one GPU (Flower's simulation gives each a share, `federation.client_gpus`),
through `fedpress`'s own run code. Nothing in CI or the tests needs it.

    python benchmarks/gpu_check.py                       # on CUDA: ~2-4 min
    python benchmarks/gpu_check.py --device cpu --model tiny-llama   # the same code, a smoke run

Per base it prints and saves (benchmarks/results/gpu_check.{json,md}): the final eval loss
against round 0's, the step time (clients' training seconds / their optimizer steps), the
clients' peak GPU memory in a turn (`client_peak_mem_bytes`: the CUDA allocator's peak during
the turn, the weights included), bytes up, and the run's wall time. A `--device cpu` smoke
run only prints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, make_config, markdown_table, quiet, run, save


def setting(args: argparse.Namespace, base: str) -> dict:
    return {
        "model": args.model,
        "num_clients": args.clients,
        "rounds": args.rounds,
        "data.source": str(SHARED_DATA / "sst2" / "train.tsv"),
        "data.eval_source": str(SHARED_DATA / "sst2" / "test.tsv"),
        "data.eval_size": 200,
        "data.max_train_examples": 800,
        "data.max_length": 64,
        "train.local_steps": args.steps,
        "train.batch_size": 8,
        "train.lr": 3e-4,
        "federation.fraction_train": 1.0,
        "federation.client_gpus": 1.0 / args.clients if args.device == "cuda" else 0.0,
        "runtime.device": args.device,
        "runtime.dtype": "bfloat16" if base == "bf16" else "auto",
        "runtime.quantize": "4bit" if base == "4bit" else "none",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    quiet()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; --device cpu runs the same code as a smoke run")
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for base in ("bf16", "4bit"):
            started = time.perf_counter()
            summary = run(make_config(setting(args, base)), Path(tmp) / base)
            wall = time.perf_counter() - started
            lines = (Path(tmp) / base / "metrics.jsonl").read_text().splitlines()
            rounds = [json.loads(line) for line in lines]
            steps = sum(r["clients_ok"] for r in rounds[1:]) * args.steps
            rows.append(
                {
                    "base": base,
                    "device": device,
                    "clients": args.clients,
                    "eval_loss_start": round(rounds[0]["eval_loss"], 4),
                    "eval_loss_end": round(summary["final_eval_loss"], 4),
                    "step_s": round(sum(r["client_train_s"] for r in rounds) / steps, 4),
                    "client_peak_mb": round(
                        max(r["client_peak_mem_bytes"] for r in rounds) / 1e6, 1
                    ),
                    "mb_up": round(summary["bytes_up_total"] / 1e6, 2),
                    "wall_s": round(wall, 1),
                }
            )
            print(rows[-1], flush=True)
    columns = [(key, key) for key in rows[0]]
    table = markdown_table(rows, columns)
    print(table)
    if args.device == "cuda":  # a CPU smoke run checks the code, it is no GPU figure
        save(
            "gpu_check",
            {"rows": rows, "command": " ".join(sys.argv), "load": os.getloadavg()},
            table,
        )


if __name__ == "__main__":
    main()
