"""FedCyBGD in its paper's regime (issue 30): many clients, one turn each per round, against
Fed-full averaging all of them, with each method's learning rate chosen on a validation split.

SmolLM2-135M on the Alpaca subset (IID; the paper: LLaMA-2-7B, Alpaca-GPT4, 64 clients, 3
rounds). The file is split once (fixed seed): 100 records held out (the reported loss, every
round), 100 for validation (the sweep's choice, scored on the final model), the rest to train
(capped at 2,000 examples, shared IID). Per client turn, a fixed amount of local work: 2 AdamW
steps of batch 4 (a fresh optimizer each turn, as the paper's clients), for every method.

- cybgd-asc / cybgd-random: FedCyBGD, every client one turn a round (block i mod 30, or a random
  block), exact download without delta sync (delta sync keeps one view per node on the server:
  32 x 538 MB); the paper's lossy download costs quality (docs/fedcybgd.md) and is left out.
- fedbavg: the aggregated allocation, 2 clients per block from the same snapshot, averaged.
- fed-full: every client every round, averaged (streamed aggregation).

For each client count and method, the learning rates of `--lrs` at seed 0; the rate whose final
model has the lowest validation loss is then run with the other seeds. Compared at equal rounds
(held-out loss after each) and at equal client compute seconds (the summed `client_train_s`:
held-out loss interpolated on each run's per-round curve at the smallest total any method took).

    python benchmarks/fedcybgd_regime.py --clients 3,32 --seeds 0,1          # hours
    python benchmarks/fedcybgd_regime.py --clients 32 --methods fed-full     # a part
    python benchmarks/fedcybgd_regime.py --no-run                            # tables only
    python benchmarks/fedcybgd_regime.py --smoke                             # tiny-llama

Each run is runs/fedcybgd_regime/c<clients>/<method>-lr<lr>/seed-<k>/; a finished one is
skipped, an interrupted one resumes, so the table fills in over several sessions. Writes
benchmarks/results/fedcybgd_regime.{json,md} and fedcybgd_regime.png.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from common import (
    MB,
    REPO,
    RESULTS,
    SHARED_DATA,
    make_config,
    markdown_table,
    mean_sd,
    quiet,
    save,
)
from fedpress.compare_report import load_run

OUT = REPO / "runs" / "fedcybgd_regime"
EXACT = {"method": "fedcybgd", "cybgd.delta_sync": False, "cybgd.layer_drop_ratio": 0.0}
METHODS: dict[str, dict[str, Any]] = {
    "cybgd-asc": {**EXACT, "cybgd.allocation": "ascending"},
    "cybgd-random": {**EXACT, "cybgd.allocation": "random"},
    "fedbavg": {**EXACT, "cybgd.allocation": "aggregated"},
    "fed-full": {"method": "fed-full"},
}
HELD_OUT, VALIDATION = 100, 100


def split_alpaca(dest: Path) -> dict[str, Path]:
    """train / validation / held-out JSON files, written once (the same for every seed)."""
    paths = {part: dest / f"{part}.json" for part in ("train", "validation", "heldout")}
    if all(p.is_file() for p in paths.values()):
        return paths
    records = json.loads((SHARED_DATA / "alpaca" / "alpaca_5000.json").read_text())
    random.Random(0).shuffle(records)
    parts = {
        "heldout": records[:HELD_OUT],
        "validation": records[HELD_OUT : HELD_OUT + VALIDATION],
        "train": records[HELD_OUT + VALIDATION :],
    }
    dest.mkdir(parents=True, exist_ok=True)
    for part, chosen in parts.items():
        paths[part].write_text(json.dumps(chosen))
    return paths


def setting(clients: int, paths: dict[str, Path], smoke: bool) -> dict[str, Any]:
    flat = {
        "model": "tiny-llama" if smoke else "smollm2-135m",
        "num_clients": clients,
        "rounds": 1 if smoke else 3,
        "data.source": str(paths["train"]),
        "data.eval_source": str(paths["heldout"]),
        "data.eval_size": 16 if smoke else HELD_OUT,
        "data.max_train_examples": 200 if smoke else 2000,
        "data.max_length": 128,
        "train.local_steps": 1 if smoke else 2,
        "train.batch_size": 4,
        "eval.per_round_examples": 16 if smoke else HELD_OUT,  # every round on all of it
        "eval.batch_size": 16,
    }
    return flat


def run_one(config_flat: dict[str, Any], out: Path) -> dict[str, Any]:
    """The run (skipped when finished, resumed when interrupted), then its validation loss."""
    from fedpress.runner import run_config

    if not (out / "summary.json").is_file():
        resume = (out / "checkpoint.safetensors").is_file()
        print(f"run {out}{' (resuming)' if resume else ''}", flush=True)
        run_config(make_config(config_flat), out, resume=resume)
    return validation_loss(out, Path(config_flat["data.source"]).with_name("validation.json"))


def validation_loss(run: Path, data: Path) -> dict[str, Any]:
    """The final model's loss on the validation records (cached in the run folder), through the
    same tokenisation and evaluation every run uses."""
    cached = run / "validation.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from fedpress.data import load_alpaca_json
    from fedpress.export import load_run
    from fedpress.training import encode, evaluate

    tuned = load_run(run)
    length = tuned.config.data.max_length
    encoded = [encode(e, tuned.tokenizer, length) for e in load_alpaca_json(data)]
    result = evaluate(tuned.model, encoded, batch_size=16, pad_id=int(tuned.tokenizer.pad_token_id))
    record = {"validation_loss": result.loss, "records": len(encoded), "data": str(data)}
    cached.write_text(json.dumps(record))
    return record


def read_run(folder: Path) -> dict[str, Any] | None:
    if not (folder / "summary.json").is_file():
        return None
    result = load_run(folder)
    summary = result.summary or {}
    compute, curve = 0.0, []
    for r in result.rounds:
        compute += r.get("client_train_s", 0.0)
        curve.append({"round": r["round"], "loss": r["eval_loss"], "client_s": compute})
    validation = folder / "validation.json"
    return {
        "final_loss": summary["final_eval_loss"],
        "validation_loss": json.loads(validation.read_text())["validation_loss"]
        if validation.is_file()
        else None,
        "bytes_up": summary["bytes_up_total"],
        "bytes_down": summary["bytes_down_total"],
        "client_peak_mem_bytes": summary.get("client_peak_mem_bytes"),
        "client_s": compute,
        "wall_s": summary.get("wall_s"),
        "curve": curve,
    }


def loss_at(curve: list[dict[str, Any]], budget: float) -> float | None:
    """Held-out loss when the run's clients had spent `budget` compute seconds (linear between
    evaluated rounds; None past the run's end)."""
    for before, after in zip(curve, curve[1:], strict=False):
        if before["client_s"] <= budget <= after["client_s"]:
            span = after["client_s"] - before["client_s"]
            t = 0.0 if span == 0 else (budget - before["client_s"]) / span
            return before["loss"] + t * (after["loss"] - before["loss"])
    return None


def lr_name(lr: float) -> str:
    return f"lr{lr:g}"


def sweep_of(folder: Path, method: str, lrs: list[float]) -> dict[float, float | None]:
    """Seed 0's validation loss of `method` at each rate (None: not run yet)."""
    runs = {lr: read_run(folder / f"{method}-{lr_name(lr)}" / "seed-0") for lr in lrs}
    return {lr: r and r["validation_loss"] for lr, r in runs.items()}


def chosen_rate(sweep: dict[float, float | None]) -> float | None:
    """The rate with the lowest validation loss, once the whole sweep has run."""
    if any(loss is None for loss in sweep.values()):
        return None
    return min(sweep, key=sweep.get)  # type: ignore[arg-type]


def collect(clients: list[int], lrs: list[float], seeds: list[int], root: Path) -> dict:
    """Per client count: the sweep (seed 0), each method's chosen rate and its seeds."""
    table: dict[str, Any] = {}
    for k in clients:
        folder, sweep, chosen = root / f"c{k}", {}, {}
        for method in METHODS:
            losses = sweep_of(folder, method, lrs)
            sweep[method] = {lr_name(lr): loss for lr, loss in losses.items()}
            best = chosen_rate(losses)
            if best is None:
                continue  # the choice waits for the whole sweep
            runs = {s: read_run(folder / f"{method}-{lr_name(best)}" / f"seed-{s}") for s in seeds}
            chosen[method] = {"lr": best, "runs": {s: r for s, r in runs.items() if r}}
        table[str(k)] = {"sweep": sweep, "chosen": chosen}
    return table


def rows_of(table: dict) -> list[dict[str, Any]]:
    rows = []
    for k, part in table.items():
        chosen = part["chosen"]
        finished = [m for m in chosen.values() if m["runs"]]
        budget = min((min(r["client_s"] for r in m["runs"].values()) for m in finished), default=0)
        full = chosen.get("fed-full", {}).get("runs", {})
        for method, entry in chosen.items():
            runs = entry["runs"]
            if not runs:
                continue
            finals = [r["final_loss"] for r in runs.values()]
            at_budget = [loss_at(r["curve"], budget) for r in runs.values()]
            vs_full = [runs[s]["final_loss"] - full[s]["final_loss"] for s in runs if s in full]
            rows.append(
                {
                    "clients": k,
                    "method": method,
                    "lr": f"{entry['lr']:g}",
                    "seeds": ",".join(map(str, sorted(runs))),
                    "final": mean_sd(finals, 4),
                    "vs_full": mean_sd(vs_full, 4, signed=True)
                    if vs_full and method != "fed-full"
                    else "-",
                    "budget": f"{budget:.0f}",
                    "at_budget": mean_sd([x for x in at_budget if x is not None], 4),
                    "up": _mean(r["bytes_up"] for r in runs.values()) / MB,
                    "down": _mean(r["bytes_down"] for r in runs.values()) / MB,
                    "mem": _mean(r["client_peak_mem_bytes"] or 0 for r in runs.values()) / MB,
                    "client_s": _mean(r["client_s"] for r in runs.values()),
                    "wall": _mean(r["wall_s"] or 0 for r in runs.values()),
                }
            )
    for row in rows:
        for key, digits in (("up", 1), ("down", 1), ("mem", 0), ("client_s", 0), ("wall", 0)):
            row[key] = f"{row[key]:.{digits}f}"
    return rows


def _mean(values: Any) -> float:
    return statistics.mean(list(values))


COLUMNS = [
    ("clients", "clients"),
    ("method", "method"),
    ("lr", "lr (chosen)"),
    ("seeds", "seeds"),
    ("final", "held-out loss after 3 rounds"),
    ("vs_full", "vs fed-full, same seed"),
    ("budget", "equal compute: client s"),
    ("at_budget", "held-out loss at that compute"),
    ("up", "MB up"),
    ("down", "MB down"),
    ("mem", "client peak MB"),
    ("client_s", "client compute s"),
    ("wall", "wall s"),
]


def markdown(table: dict, lrs: list[float], command: str) -> str:
    sweep_rows = [
        {"clients": k, "method": m, **{n: f"{v:.4f}" if v else "-" for n, v in losses.items()}}
        for k, part in table.items()
        for m, losses in part["sweep"].items()
    ]
    sweep_cols = [("clients", "clients"), ("method", "method")] + [
        (lr_name(lr), f"validation loss at lr {lr:g}") for lr in lrs
    ]
    return "\n".join(
        [
            "## FedCyBGD in its paper's regime: SmolLM2-135M / Alpaca (issue 30)",
            "",
            f"`{command}`",
            "",
            "3 rounds; every client one turn (FedBAvg: 2 clients per block) or one local "
            "update (fed-full) a round of 2 AdamW steps x batch 4; exact FedCyBGD download "
            "without delta sync. Held-out loss on 100 Alpaca records never trained on or used "
            "for the choice; the learning rate of each method chosen by the final model's loss "
            "on 100 other records (seed 0). '-' = not run yet.",
            "",
            markdown_table(rows_of(table), COLUMNS),
            "",
            "The sweep (seed 0):",
            "",
            markdown_table(sweep_rows, sweep_cols),
        ]
    )


def plot(table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(k, p) for k, p in table.items() if any(m["runs"] for m in p["chosen"].values())]
    if not parts:
        return
    fig, axes = plt.subplots(len(parts), 2, figsize=(12, 4.2 * len(parts)), squeeze=False)
    for (left, right), (k, part) in zip(axes, parts, strict=True):
        for method, entry in part["chosen"].items():
            for seed, run in entry["runs"].items():
                label = f"{method} lr {entry['lr']:g}" if seed == min(entry["runs"]) else None
                xs = [p["round"] for p in run["curve"]]
                ys = [p["loss"] for p in run["curve"]]
                line = left.plot(xs, ys, marker="o", label=label)[0]
                right.plot([p["client_s"] for p in run["curve"]], ys, color=line.get_color())
        left.set_title(f"{k} clients: held-out loss per round", fontsize=10)
        right.set_title(f"{k} clients: against client compute seconds", fontsize=10)
        left.set_xlabel("round")
        right.set_xlabel("summed client training seconds")
        for ax in (left, right):
            ax.set_ylabel("held-out loss")
            ax.grid(alpha=0.3)
        left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "fedcybgd_regime.png", dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="3,32")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lrs", default="3e-5,1e-4,3e-4")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny-llama, 1 round, no saving")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown method {sorted(unknown)} (known: {list(METHODS)})")
    root = OUT.with_name("fedcybgd_regime_smoke") if args.smoke else OUT
    paths = split_alpaca(root / "split")
    quiet()
    if not args.no_run:
        for k in clients:
            base = setting(k, paths, args.smoke)
            for method in methods:
                folder = root / f"c{k}"
                for lr in lrs:
                    config = {**base, **METHODS[method], "train.lr": lr, "seed": 0}
                    run_one(config, folder / f"{method}-{lr_name(lr)}" / "seed-0")
                best = chosen_rate(sweep_of(folder, method, lrs))
                for seed in seeds:
                    config = {**base, **METHODS[method], "train.lr": best, "seed": seed}
                    run_one(config, folder / f"{method}-{lr_name(best)}" / f"seed-{seed}")
    table = collect(clients, lrs, seeds, root)
    command = (
        f"python benchmarks/fedcybgd_regime.py --clients {args.clients} --lrs {args.lrs} "
        f"--seeds {args.seeds}"
    )
    text = markdown(table, lrs, command)
    print(text)
    if not args.smoke:
        save("fedcybgd_regime", table, text)
        plot(table)


if __name__ == "__main__":
    main()
