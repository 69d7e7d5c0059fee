"""What each `[aggregation]` rule costs the server: wall time and the memory the call adds
above the updates it is given, for n client updates of a SmolLM2-135M LoRA adapter (rank 8,
q/k/v/o) and of the whole SmolLM2-135M (fed-full), measured in one invocation.

    python benchmarks/aggregation_cost.py              # LoRA adapter, 2 and 8 clients
    python benchmarks/aggregation_cost.py --full       # also the whole model, 2 and 4 clients

The updates are random normal tensors of the real shapes (the rules' cost does not depend on
the values). Memory: `fedpress.memory.training_memory` around the call (the kernel's
resident high-water mark, reset before it, minus the resident memory just before it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import markdown_table, quiet, save
from fedpress.aggregation import aggregate
from fedpress.config import AggregationConfig, load_config
from fedpress.memory import training_memory

RULES = {
    "mean": AggregationConfig(),
    "mean + median norm bound": AggregationConfig(norm_bound="median"),
    "median": AggregationConfig("median"),
    "trimmed_mean (0.2)": AggregationConfig("trimmed_mean"),
    "krum (f = 1)": AggregationConfig("krum"),
    "multikrum (f = 1)": AggregationConfig("multikrum"),
}


def shapes(full: bool) -> dict[str, tuple[int, ...]]:
    from fedpress.models import add_lora, load_base_model

    config = load_config(None, ["model=smollm2-135m"])
    model = load_base_model(config.model, config.runtime)
    if full:
        return {n: tuple(p.shape) for n, p in model.named_parameters()}
    model = add_lora(model, config.lora)
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def measure(kind: str, named: dict[str, tuple[int, ...]], clients: int, repeats: int) -> list:
    generator = torch.Generator().manual_seed(0)
    updates = [
        {n: torch.randn(s, generator=generator) for n, s in named.items()} for _ in range(clients)
    ]
    numbers = sum(torch.Size(s).numel() for s in named.values())
    rows = []
    for label, rule in RULES.items():
        times, added = [], []
        for _ in range(repeats):
            with training_memory(torch.device("cpu")) as memory:
                started = time.perf_counter()
                aggregate(rule, updates, [1.0] * clients)
                times.append(time.perf_counter() - started)
            added.append(memory["bytes"])
        row = {
            "updates": kind,
            "clients": clients,
            "rule": label,
            "time_s": round(statistics.median(times), 3),
            "added_mb": round(max(added) / 1e6, 1),
            "updates_mb": round(clients * numbers * 4 / 1e6, 1),
        }
        print(row)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also fed-full's whole-model updates")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    quiet()
    torch.set_num_threads(1)
    rows = []
    lora = shapes(full=False)
    for clients in (2, 8):
        rows += measure("LoRA r8 adapter", lora, clients, args.repeats)
    if args.full:
        whole = shapes(full=True)
        for clients in (2, 4):
            rows += measure("whole model", whole, clients, 1)
    columns = [
        ("updates", "updates"),
        ("clients", "clients"),
        ("rule", "rule"),
        ("time_s", "time s (median)"),
        ("added_mb", "memory the call adds, MB"),
        ("updates_mb", "the updates themselves, MB"),
    ]
    table = markdown_table(rows, columns)
    print(table)
    save("aggregation_cost", {"rows": rows, "threads": 1}, table)


if __name__ == "__main__":
    main()
