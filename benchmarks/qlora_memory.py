"""A client's memory and step time over an fp32, an 8-bit and a 4-bit (NF4) SmolLM2-135M base,
measured in one invocation: each base in a fresh process of its own, one after the other, so
that no process holds another base's allocations.

    python benchmarks/qlora_memory.py               # fp32, 8bit, 4bit; 6 steps each
    python benchmarks/qlora_memory.py --steps 10 --gradient-checkpointing

Per base: the resident memory the loaded model with its LoRA adapter adds to the process
(RSS after the load minus RSS before it), transformers' `get_memory_footprint()` of the model,
and one client turn of `--steps` LoRA-FedAvg steps (batch 8, SST-2 sentences, max_length 64,
the converged protocol's) through `LoraTask.train_round`, the code a client runs: its peak
resident memory and what training added (`fedpress.memory.training_memory`, the figures
`client_peak_mem_bytes` / `client_train_mem_bytes` of a run), and the median step time after
the first step. SmolLM2's tied 28 M-parameter embedding stays fp32 in every base
(bitsandbytes quantizes linear layers only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import SHARED_DATA, markdown_table, quiet, save

BASES = ("none", "8bit", "4bit")


def measure_one(quantize: str, steps: int, checkpointing: bool) -> dict:
    import psutil
    import torch

    from fedpress.config import load_config
    from fedpress.memory import training_memory
    from fedpress.task import build_task

    torch.set_num_threads(int(os.environ.get("QLORA_THREADS", "2")))
    config = load_config(
        None,
        [
            "model=smollm2-135m",
            f'data.source="{SHARED_DATA / "sst2" / "train.tsv"}"',
            "data.max_train_examples=400",
            "data.max_length=64",
            "train.batch_size=8",
            "train.lr=3e-4",
            f"train.gradient_checkpointing={str(checkpointing).lower()}",
            f"runtime.quantize={quantize}",
            "runtime.device=cpu",
        ],
    )
    import peft  # noqa: F401 - imported before the baseline, like torch and transformers

    process = psutil.Process()
    before = process.memory_info().rss
    task = build_task(config)
    loaded = process.memory_info().rss - before
    data = task.encode_all(task.splits.client_shares[0])
    times = []
    with training_memory(task.device) as memory:
        for step in range(steps):
            started = time.perf_counter()
            task.train_round(data, step + 1, steps=1, seed=step)
            times.append(time.perf_counter() - started)
    return {
        "base": "fp32" if quantize == "none" else quantize,
        "model_loaded_mb": round(loaded / 1e6, 1),
        "footprint_mb": round(task.model.get_memory_footprint() / 1e6, 1),
        "peak_mb": round(memory["peak"] / 1e6, 1),
        "train_added_mb": round(memory["bytes"] / 1e6, 1),
        "step_s": round(statistics.median(times[1:]), 3),
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--one", choices=BASES, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    quiet()
    if args.one:
        print(json.dumps(measure_one(args.one, args.steps, args.gradient_checkpointing)))
        return
    rows = []
    for quantize in BASES:
        command = [sys.executable, __file__, "--one", quantize, "--steps", str(args.steps)]
        if args.gradient_checkpointing:
            command.append("--gradient-checkpointing")
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    fp32 = rows[0]
    for row in rows:
        row["peak_vs_fp32"] = round(row["peak_mb"] / fp32["peak_mb"], 2)
        row["step_vs_fp32"] = round(row["step_s"] / fp32["step_s"], 2)
    columns = [
        ("base", "base"),
        ("model_loaded_mb", "model + adapter loaded, MB (RSS)"),
        ("footprint_mb", "get_memory_footprint, MB"),
        ("peak_mb", "client peak in a turn, MB"),
        ("peak_vs_fp32", "peak / fp32"),
        ("train_added_mb", "training adds, MB"),
        ("step_s", "step s (median)"),
        ("step_vs_fp32", "step / fp32"),
    ]
    table = markdown_table(rows, columns)
    print(table)
    name = "qlora_memory" + ("_checkpointing" if args.gradient_checkpointing else "")
    save(name, {"rows": rows, "load": os.getloadavg(), "command": " ".join(sys.argv)}, table)


if __name__ == "__main__":
    main()
