"""FedCyBGD benchmark: SmolLM2-135M, FedCyBGD vs Fed-full, LoRA-FedAvg and centralised.

Every variant trains for the same number of client optimizer steps (`--steps`, default 30):
FedCyBGD walks `--steps` turns of one step each (30 = every one of SmolLM2's 30 decoder
layers once), Fed-full and LoRA-FedAvg give each of the `--clients` clients
`steps / clients` local steps in one round, centralised full tuning takes `--steps` steps on
the pooled data. Aggregated allocation (FedBAvg) trains each block with 2 clients, so it takes
twice the client steps; the table says so.

Tasks: SST-2 (accuracy on a seeded sample of `--sst2-test` examples of the 872-example
labelled test split; the untuned model's accuracy is printed) and the Alpaca subset
(instruction format, held-out loss on `--alpaca-eval` examples held out of alpaca_5000.json).

Memory: `client peak train MB` is what a client's training turn adds on top of the model it
holds (src/fedpress/memory.py: sampled RSS above the pre-turn baseline). LoRA-FedAvg's and
centralised runs report the process's lifetime peak RSS instead (marked *): not comparable.

    python benchmarks/fedcybgd.py [--variants sst2:fed-full,sst2:asc-comp,...] [--steps 30]

Results are saved after every variant (benchmarks/results/fedcybgd.{md,json}).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path
from typing import Any

from common import MB, RESULTS, SHARED_DATA, make_config, markdown_table, quiet, run, save

COMPRESSED = {"cybgd.layer_drop_ratio": 0.2, "cybgd.prune_ratio": 0.5, "cybgd.delta_sync": True}
PLAIN = {"cybgd.layer_drop_ratio": 0.0, "cybgd.prune_ratio": 0.0, "cybgd.delta_sync": False}

# variant -> (method, overrides); "per-turn" methods take one step per turn.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "fed-full": ("fed-full", {}),
    "asc": ("fedcybgd", {"cybgd.allocation": "ascending", **PLAIN}),
    "asc-comp": ("fedcybgd", {"cybgd.allocation": "ascending", **COMPRESSED}),
    "desc-comp": ("fedcybgd", {"cybgd.allocation": "descending", **COMPRESSED}),
    "random-comp": ("fedcybgd", {"cybgd.allocation": "random", **COMPRESSED}),
    "agg-comp": (
        "fedcybgd",
        {"cybgd.allocation": "aggregated", "cybgd.clients_per_block": 2, **COMPRESSED},
    ),
    "lora-fedavg": ("lora-fedavg", {}),
    "centralized-full": ("centralized-full", {}),
    "centralized-cyclic": ("centralized-cyclic", {}),
    "centralized": ("centralized", {}),
}
DEFAULT_ORDER = (
    "sst2:fed-full,sst2:asc-comp,alpaca:asc-comp,alpaca:fed-full,sst2:asc,sst2:lora-fedavg,"
    "sst2:desc-comp,sst2:random-comp,sst2:agg-comp,alpaca:lora-fedavg,sst2:centralized-full"
)


def sst2_test_sample(count: int, seed: int = 0) -> Path:
    """A seeded sample of the labelled SST-2 test split, written as a TSV beside the results."""
    source = SHARED_DATA / "sst2" / "test.tsv"
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if count and count < len(rows):
        rows = random.Random(seed).sample(rows, count)
    target = RESULTS / "runs" / f"sst2-test-sample-{len(rows)}.tsv"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(
            handle, ["sentence", "label"], delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\"
        )
        writer.writeheader()
        writer.writerows({"sentence": r["sentence"], "label": r["label"]} for r in rows)
    return target


def task_setting(task: str, args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "model": "smollm2-135m",
        "num_clients": args.clients,
        "rounds": 1,
        "seed": 0,
        "data.max_length": args.max_length,
        "data.max_train_examples": args.max_train,
        "train.batch_size": args.batch,
        "eval.batch_size": 32,
        "eval.per_round_examples": args.per_round_eval,
        "federation.client_cpus": 2,
    }
    if task == "sst2":
        return {
            **common,
            "data.source": str(SHARED_DATA / "sst2" / "train.tsv"),
            "data.eval_source": str(sst2_test_sample(args.sst2_test)),
            "data.partition": "dirichlet",
            "data.dirichlet_alpha": 0.5,
        }
    return {
        **common,
        "data.source": str(SHARED_DATA / "alpaca" / "alpaca_5000.json"),
        "data.eval_size": args.alpaca_eval,
    }


def variant_config(task: str, name: str, args: argparse.Namespace):  # noqa: ANN201
    method, overrides = VARIANTS[name]
    per_client = max(1, args.steps // args.clients)
    steps: dict[str, Any]
    if method in ("fedcybgd", "centralized-cyclic"):
        steps = {"train.local_steps": 1, "cybgd.turns_per_round": args.steps, "train.lr": args.lr}
    elif method in ("fed-full", "lora-fedavg"):
        steps = {"train.local_steps": per_client}
        steps["train.lr"] = args.lora_lr if method == "lora-fedavg" else args.lr
    else:  # centralised: local_steps x clients steps on the pooled data
        steps = {"train.local_steps": per_client}
        steps["train.lr"] = args.lora_lr if method == "centralized" else args.lr
    return make_config({**task_setting(task, args), "method": method, **steps, **overrides})


def client_steps(summary: dict[str, Any]) -> int:
    if "client_steps_total" in summary:
        return int(summary["client_steps_total"])
    config = summary["config"]
    clients = config["num_clients"] if summary["method"] in ("fed-full", "lora-fedavg") else 1
    factor = config["num_clients"] if summary["method"].startswith("centralized") else 1
    return config["rounds"] * clients * factor * config["train"]["local_steps"]


def row_of(task: str, name: str, summary: dict[str, Any], wall: float) -> dict[str, Any]:
    config = summary["config"]
    per_client_round = config["num_clients"] * config["rounds"]
    federated = summary["method"] in ("fedcybgd", "fed-full", "lora-fedavg")
    measured = summary["method"] in ("fedcybgd", "fed-full", "centralized-cyclic")
    turn = summary.get("download_bytes_per_turn", {})
    row = {
        "task": task,
        "variant": name,
        "method": summary["method"],
        "client_steps": client_steps(summary),
        "quality": (
            f"{100 * summary['final_accuracy']:.2f} %"
            if task == "sst2"
            else f"{summary['final_eval_loss']:.4f}"
        ),
        "eval_loss": f"{summary['final_eval_loss']:.4f}",
        "up_MB": f"{summary['bytes_up_total'] / MB / per_client_round:.1f}" if federated else "0",
        "down_MB": f"{summary['bytes_down_total'] / MB / per_client_round:.1f}"
        if federated
        else "0",
        "down_turn": "",
        "up_turn_MB": "",
        "mem_MB": f"{summary['client_peak_mem_bytes'] / MB:.0f}" + ("" if measured else "*"),
        "wall_s": f"{wall:.0f}",
        "accuracy": summary["final_accuracy"],
        "final_eval_loss": summary["final_eval_loss"],
        "client_peak_mem_bytes": summary["client_peak_mem_bytes"],
    }
    if turn.get("later_mean"):
        share = turn["later_share_of_full_model"]
        row["down_turn"] = f"{turn['later_mean'] / MB:.1f} ({100 * share:.1f} %)"
        row["up_turn_MB"] = f"{summary['upload_bytes_per_turn'] / MB:.1f}"
    return row


COLUMNS = [
    ("task", "task"),
    ("variant", "variant"),
    ("client_steps", "client steps"),
    ("quality", "SST-2 test acc / Alpaca held-out loss"),
    ("eval_loss", "eval loss"),
    ("up_MB", "MB up / client / round"),
    ("down_MB", "MB down / client / round"),
    ("down_turn", "MB down per later turn (% of full model)"),
    ("up_turn_MB", "MB up per turn"),
    ("mem_MB", "client peak train MB"),
    ("mem_vs_fedfull", "mem vs fed-full"),
    ("wall_s", "wall s"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", default=DEFAULT_ORDER, help="task:variant,... in order")
    parser.add_argument("--steps", type=int, default=30, help="client optimizer steps per run")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--max-train", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-4, help="full-parameter methods")
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--sst2-test", type=int, default=300, help="0 = all 872")
    parser.add_argument("--alpaca-eval", type=int, default=100)
    parser.add_argument("--per-round-eval", type=int, default=32)
    parser.add_argument("--name", default="fedcybgd")
    parser.add_argument("--untuned", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--merge", help="only tabulate the saved rows of these result names (a,b) together"
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge.split(","), args.name)
        return
    quiet()
    rows: list[dict[str, Any]] = []
    full = RESULTS / f"{args.name}.json"
    for item in args.variants.split(","):
        task, _, name = item.partition(":")
        config = variant_config(task, name, args)
        out = RESULTS / "runs" / f"{args.name}-{task}-{name}"
        started = time.perf_counter()
        summary = run(config, out)
        rows.append(row_of(task, name, summary, time.perf_counter() - started))
        _relative_memory(rows)
        table = markdown_table(rows, COLUMNS)
        print(table, flush=True)
        extras = {r["variant"] + "@" + r["task"]: r for r in rows}
        save(args.name, {"args": vars(args), "rows": rows, "by_variant": extras}, table)
        json.loads(full.read_text())  # the saved file parses
    if args.untuned:
        untuned = {task: _untuned(task, args) for task in sorted({r["task"] for r in rows})}
        described = [
            f"{task}: acc {_pct(u['accuracy'])}, loss {u['loss']:.4f}"
            for task, u in untuned.items()
        ]
        table += "\n\nUntuned SmolLM2-135M on the same eval data: " + ", ".join(described)
        print(table)
        save(args.name, {"args": vars(args), "rows": rows, "untuned": untuned}, table)


def merge(names: list[str], target: str) -> None:
    """One table from several saved result files (runs split over processes)."""
    saved = [json.loads((RESULTS / f"{name}.json").read_text()) for name in names]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    superseded = []
    for row in (row for result in saved for row in result["rows"]):
        key = (row["task"], row["variant"])
        if key in latest:  # a later file re-ran this variant
            superseded.append(latest[key])
        latest[key] = row
    rows = list(latest.values())
    order = {"sst2": 0, "alpaca": 1}
    rows.sort(key=lambda r: (order.get(r["task"], 2), list(VARIANTS).index(r["variant"])))
    _relative_memory(rows)
    table = markdown_table(rows, COLUMNS)
    for result in saved:
        if "untuned" in result:
            described = [
                f"{task}: acc {_pct(u['accuracy'])}, loss {u['loss']:.4f}"
                for task, u in result["untuned"].items()
            ]
            table += "\n\nUntuned SmolLM2-135M on the same eval data: " + ", ".join(described)
    print(table)
    runs = [r["args"] for r in saved]
    save(target, {"merged": names, "runs": runs, "rows": rows, "superseded": superseded}, table)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _untuned(task: str, args: argparse.Namespace) -> dict[str, Any]:
    from fedpress.full_task import build_full_task

    built = build_full_task(variant_config(task, "centralized-full", args))
    built.set_adapter(built.initial_adapter)
    result = built.evaluate(built.encode_all(built.splits.eval_examples))
    return {"accuracy": result.accuracy, "loss": result.loss}


def _relative_memory(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        base = next(
            (r for r in rows if r["task"] == row["task"] and r["variant"] == "fed-full"), None
        )
        if base and not row["mem_MB"].endswith("*") and base["client_peak_mem_bytes"]:
            share = row["client_peak_mem_bytes"] / base["client_peak_mem_bytes"]
            row["mem_vs_fedfull"] = f"{100 * share:.0f} %"


if __name__ == "__main__":
    main()
