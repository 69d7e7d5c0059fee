"""Converged evidence (issue 18): a matrix run to the end with several seeds, then per variant
the final quality, the bytes every run sent, the uplink it took to come within reach of
uncompressed LoRA-FedAvg, client memory and wall time, with mean and spread over seeds.

Each seed is one `fedpress compare` of the matrix with `base.seed` set, in
`<out>/seed-<k>/` (so a cut-short invocation resumes: finished variants are skipped, an
interrupted one resumes from its checkpoint). Then every finished run folder is read back and
`benchmarks/results/converged.{json,md}` and the plots are rebuilt from them, with the runs
converged.json already recorded (curves included) where no run folder replaces them, marked as
recorded; a variant or seed that has neither is listed as not run, never filled in.

    python benchmarks/converged.py examples/matrices/converged_sst2.toml --seeds 0,1
    python benchmarks/converged.py MATRIX --seeds 0,1 --variants lora-fedavg,int4   # a subset
    python benchmarks/converged.py MATRIX --seeds 0,1 --no-run                      # tables only

Bytes to target: the cumulative training uplink (TGAP's one-off upload excluded, reported
apart) after the first round whose per-round accuracy is within `--accuracy-points` of the
final per-round accuracy of the reference run with the same seed (on a data set without
accuracy: whose eval loss is within `--loss-percent` of its final eval loss); the loss target
is given beside the accuracy one, as per-round accuracy on a small subset is noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

import tomli_w  # comes with flwr (pinned)

from common import MB, REPO, RESULTS, markdown_table, quiet
from fedpress import registry
from fedpress.compare_report import (
    VariantResult,
    client_steps,
    codec_label,
    load_results,
    load_run,
    training_bytes,
)

RESULT_NAME = "converged"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("matrix", type=Path)
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--out", type=Path, help="default: runs/<matrix name>")
    parser.add_argument("--no-run", action="store_true", help="only rebuild tables and plots")
    parser.add_argument("--accuracy-points", type=float, default=1.0)
    parser.add_argument("--loss-percent", type=float, default=1.0)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    raw = tomllib.loads(args.matrix.read_text())
    names = [v["name"] for v in raw["variant"]]
    wanted = [n.strip() for n in args.variants.split(",") if n.strip()] or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        sys.exit(f"{args.matrix}: no variant named {', '.join(unknown)} (it has {names})")
    out = args.out or REPO / "runs" / args.matrix.stem
    if not args.no_run:
        run_seeds(raw, args.matrix, wanted, seeds, out)
    recorded = recorded_runs(args.matrix.stem)
    # The tables keep every seed measured so far, not only the seeds this invocation ran.
    seeds = sorted(set(seeds) | {seed for _, seed in recorded})
    rows = collect(raw, seeds, out, recorded)
    table = summarize(raw, rows, seeds, args.accuracy_points, args.loss_percent)
    table["matrix"] = str(args.matrix)
    done = [v["variant"] for v in table["variants"] if v["seeds_done"]]
    every = "" if done == names else f" --variants {','.join(done)}"
    table["command"] = (
        f"python benchmarks/converged.py {args.matrix} --seeds {','.join(map(str, seeds))}{every}"
    )
    write_results(args.matrix.stem, table)
    plot(args.matrix.stem, rows, table)


# --- running ---------------------------------------------------------------------------------


def run_seeds(raw: dict, matrix: Path, wanted: list[str], seeds: list[int], out: Path) -> None:
    """One compare per seed, seed after seed: a cut-short invocation has whole seeds first."""
    from fedpress.compare import run_matrix

    quiet()
    for seed in seeds:
        derived = {**raw, "base": {**raw.get("base", {}), "seed": seed}}
        derived["variant"] = [v for v in raw["variant"] if v["name"] in wanted]
        if derived.get("reference") not in wanted:  # compare wants its reference among them
            derived.pop("reference", None)
        folder = out / f"seed-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"seed-{seed}.toml"
        header = f"# {matrix} with base.seed = {seed} (written by benchmarks/converged.py)\n"
        path.write_text(header + tomli_w.dumps(derived))
        print(f"seed {seed}: {len(derived['variant'])} variants into {folder}", flush=True)
        run_matrix(path, folder)


# --- reading the runs back -------------------------------------------------------------------


def recorded_runs(stem: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The finished runs converged.json already holds for this matrix, with their curves.

    Run folders are scratch (gigabytes of checkpoints, lost with the machine); the results file
    is the record. A row measured by an earlier invocation stays in the tables, marked as
    such, until a finished run folder of the same variant and seed replaces it.
    """
    path = RESULTS / f"{RESULT_NAME}.json"
    table = json.loads(path.read_text()).get(stem, {}) if path.is_file() else {}
    curves = table.get("curves", {})
    recorded = {}
    for row in table.get("runs", []):
        curve = curves.get(f"{row['variant']}/seed-{row['seed']}")
        if row.get("status") == "done" and curve:
            recorded[row["variant"], row["seed"]] = {**row, "curve": curve, "recorded": True}
    return recorded


def collect(
    raw: dict,
    seeds: list[int],
    out: Path,
    recorded: dict[tuple[str, int], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per (variant, seed): the figures of a finished run folder, else of the recorded
    run (`recorded_runs`), else status "not run" (or "failed")."""
    rows = []
    for seed in seeds:
        folder = out / f"seed-{seed}"
        results = {r.name: r for r in load_results(folder)[1]} if folder.is_dir() else {}
        for variant in raw["variant"]:
            result = results.get(variant["name"])
            if result is None and (folder / variant["name"] / "summary.json").is_file():
                # Run by an invocation with other --variants: compare.json lists only those.
                result = load_run(folder / variant["name"])
            row = read_run(variant["name"], seed, result)
            if row["status"] != "done" and (variant["name"], seed) in (recorded or {}):
                row = recorded[variant["name"], seed]
            rows.append(row)
    return rows


def client_work(rows: list[dict[str, Any]], raw: dict) -> dict[str, float] | None:
    """What the clients computed in the training rounds, mean over seeds: optimizer steps,
    forward and backward passes, examples. A zeroth-order method reports its forward passes
    (two a step, no backward); a gradient step is one forward and one backward pass."""
    if any(not r.get("client_steps") for r in rows):
        return None
    base_batch = raw.get("base", {}).get("train", {}).get("batch_size")
    work: dict[str, list[float]] = {"steps": [], "forward": [], "backward": [], "examples": []}
    for r in rows:
        steps, forward = r["client_steps"], r.get("client_forward_passes")
        work["steps"].append(steps)
        work["forward"].append(forward if forward is not None else steps)
        work["backward"].append(0 if forward is not None else steps)
        batch = r.get("batch_size") or base_batch
        work["examples"].append(steps * batch if batch else float("nan"))
    return {k: sum(v) / len(v) for k, v in work.items()}


def one_off(row: dict[str, Any], way: str) -> int:
    """A run's one-off bytes; rows recorded before the key existed held TGAP's alone."""
    return row.get(f"one_off_bytes_{way}", row.get(f"tgap_bytes_{way}", 0)) or 0


def read_run(name: str, seed: int, result: VariantResult | None) -> dict[str, Any]:
    if result is None or not result.finished:
        failed = result is not None and result.status in ("failed", "interrupted")
        return {"variant": name, "seed": seed, "status": "failed" if failed else "not run"}
    summary, config = result.summary or {}, result.config
    tgap = summary.get("tgap_in_run")
    # One-off phases before round 1 (round 0, with the connection): CG-FedLLM's TGAP when it
    # ran in this run, Fed-SB's first step and its shipping of A and B.
    one_off_up = (summary.get("tgap_bytes_up", 0) if tgap else 0) + summary.get(
        "fedsb_init_bytes_up", 0
    )
    one_off_down = (
        (summary.get("tgap_bytes_down", 0) if tgap else 0)
        + summary.get("fedsb_init_bytes_down", 0)
        + summary.get("fedsb_install_bytes_down", 0)
    )
    federated = registry.get(result.method).federated  # centralized ones send nothing
    cybgd_download = summary.get("download_bytes_per_turn") or {}
    return {
        "variant": name,
        "seed": seed,
        "status": "done",
        "method": result.method,
        "federated": federated,
        "codec": codec_label(result) if federated else "(no communication)",
        "rounds": summary["rounds"],
        "final_accuracy": summary.get("final_accuracy"),
        "final_eval_loss": summary.get("final_eval_loss"),
        "final_eval_examples": summary.get("final_eval_examples"),
        # Training rounds only: round 0 (the connection, TGAP's one-off exchange) apart.
        "bytes_up_total": training_bytes(result, "up"),
        "bytes_down_total": training_bytes(result, "down"),
        "tgap_bytes_up": summary.get("tgap_bytes_up", 0) if tgap else 0,
        "tgap_bytes_down": summary.get("tgap_bytes_down", 0) if tgap else 0,
        "one_off_bytes_up": one_off_up,
        "one_off_bytes_down": one_off_down,
        "client_train_s": summary.get("client_train_s"),
        "client_forward_passes": summary.get("client_forward_passes_total"),
        "client_peak_mem_bytes": summary.get("client_peak_mem_bytes"),
        "client_steps": client_steps(result),
        "batch_size": (config.get("train") or {}).get("batch_size"),
        "wall_s": summary.get("wall_s"),
        "local_steps": config["train"]["local_steps"],
        # CG-FedLLM: how well its autoencoder reconstructs held-out TGAP updates.
        "ae_val_cosine": summary.get("tgap_val_cosine"),
        "ae_val_snr_db": summary.get("tgap_val_snr_db"),
        # FedCyBGD: a node's download after its first turn, as a share of the fp32 model.
        "download_later_share": cybgd_download.get("later_share_of_full_model"),
        "curve": [
            {
                "round": r["round"],
                "accuracy": r.get("accuracy"),
                "eval_loss": r.get("eval_loss"),
                "cum_bytes_up": training_bytes(result, "up", r),
                "clients_ok": r.get("clients_ok", 0),
            }
            for r in result.rounds
        ],
    }


# --- the tables ------------------------------------------------------------------------------


def mean_spread(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and sample standard deviation (None with a single value: no spread is known)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def bytes_to_target(row: dict, target: dict[str, float] | None) -> int | None:
    """Training uplink after the first round that reached the target, or None."""
    if not target:
        return None
    for point in row["curve"][1:]:
        accuracy, loss = point["accuracy"], point["eval_loss"]
        if "accuracy" in target:
            if accuracy is not None and accuracy >= target["accuracy"]:
                return point["cum_bytes_up"]
        elif loss is not None and loss <= target["eval_loss"]:
            return point["cum_bytes_up"]
    return None


def summarize(
    raw: dict, rows: list[dict], seeds: list[int], points: float, percent: float
) -> dict[str, Any]:
    reference = raw.get("reference", "")
    done = [r for r in rows if r["status"] == "done"]
    ref_rows = [r for r in done if r["variant"] == reference]
    # Paired targets: each seed's run against the reference run of the same seed (same split,
    # same sampled clients, same batches), so the seed-to-seed spread does not decide it.
    targets: dict[int, dict[str, float]] = {}
    loss_targets: dict[int, dict[str, float]] = {}
    trivial: list[str] = []  # seeds whose untuned model already meets the accuracy target
    for ref in ref_rows:
        final, start = ref["curve"][-1], ref["curve"][0]
        if final["accuracy"] is not None and start["accuracy"] >= final["accuracy"] - points / 100:
            trivial.append(f"seed {ref['seed']} (untuned {100 * start['accuracy']:.0f} %)")
        loss_targets[ref["seed"]] = {"eval_loss": final["eval_loss"] * (1 + percent / 100)}
        # The target: accuracy where there is one, else the eval loss.
        targets[ref["seed"]] = (
            {"accuracy": final["accuracy"] - points / 100}
            if final["accuracy"] is not None
            else loss_targets[ref["seed"]]
        )
    for row in done:
        federated = row["federated"]
        row["bytes_up_to_target"] = (
            bytes_to_target(row, targets.get(row["seed"])) if federated else None
        )
        # Per-round accuracy on a small subset is noisy; the eval loss is the smoother signal.
        row["bytes_up_to_loss_target"] = (
            bytes_to_target(row, loss_targets.get(row["seed"])) if federated else None
        )
    full_rows = [r for r in done if r["method"] == "fed-full"]
    full_mem = mean_spread([r["client_peak_mem_bytes"] for r in full_rows])
    # Paired by seed: the seed draws the held-out records too, so losses of different seeds
    # are on different sets.
    full_loss = {r["seed"]: r["final_eval_loss"] for r in full_rows}
    ref_up = mean_spread([r["bytes_up_total"] for r in ref_rows])
    ref_to_target = mean_spread(
        [r["bytes_up_to_target"] for r in ref_rows if r.get("bytes_up_to_target")]
    )
    variants = []
    for entry in raw["variant"]:
        mine = [r for r in done if r["variant"] == entry["name"]]
        missing = [r["seed"] for r in rows if r["variant"] == entry["name"] and r not in mine]
        if not mine:
            variants.append({"variant": entry["name"], "seeds_done": [], "not_run": missing})
            continue
        acc = mean_spread([r["final_accuracy"] for r in mine])
        loss = mean_spread([r["final_eval_loss"] for r in mine])
        up = mean_spread([r["bytes_up_total"] for r in mine])
        down = mean_spread([r["bytes_down_total"] for r in mine])
        mem = mean_spread([r["client_peak_mem_bytes"] for r in mine])
        reached = [r["bytes_up_to_target"] for r in mine]
        to_target = mean_spread(reached) if all(b is not None for b in reached) else None
        reached_loss = [r["bytes_up_to_loss_target"] for r in mine]
        to_loss = mean_spread(reached_loss) if None not in reached_loss else None
        with_tgap = mean_spread([r["bytes_up_total"] + one_off(r, "up") for r in mine])
        variants.append(
            {
                "variant": entry["name"],
                "method": mine[0]["method"],
                "federated": mine[0]["federated"],
                "codec": mine[0]["codec"],
                "seeds_done": [r["seed"] for r in mine],
                "not_run": missing,
                "final_accuracy": acc,
                "final_eval_loss": loss,
                "bytes_up_total": up,
                "bytes_down_total": down,
                "uplink_saving_x": ref_up[0] / up[0] if ref_up and up and up[0] else None,
                "bytes_up_to_target": to_target,
                "seeds_reaching_target": sum(b is not None for b in reached),
                "bytes_up_to_loss_target": to_loss,
                "seeds_reaching_loss_target": sum(b is not None for b in reached_loss),
                "to_target_saving_x": (
                    ref_to_target[0] / to_target[0]
                    if ref_to_target and to_target and to_target[0]
                    else None
                ),
                "tgap_bytes_up": mean_spread([r["tgap_bytes_up"] for r in mine]),
                "one_off_bytes_up": mean_spread([one_off(r, "up") for r in mine]),
                "one_off_bytes_down": mean_spread([one_off(r, "down") for r in mine]),
                "client_train_s": (
                    mean_spread([r["client_train_s"] for r in mine])
                    if all(r.get("client_train_s") is not None for r in mine)
                    else None
                ),
                # The one-off upload (TGAP's, Fed-SB's first step) amortized over the rounds.
                "uplink_saving_with_tgap_x": (
                    ref_up[0] / with_tgap[0] if ref_up and with_tgap and with_tgap[0] else None
                ),
                "client_peak_mem_bytes": mem,
                "mem_vs_fed_full": mem[0] / full_mem[0] if mem and full_mem else None,
                "client_steps": mean_spread([r["client_steps"] for r in mine]),
                "client_work": client_work(mine, raw),
                "eval_loss_vs_fed_full": [
                    {
                        "seed": r["seed"],
                        "loss": r["final_eval_loss"],
                        "fed_full": full_loss[r["seed"]],
                        "relative": r["final_eval_loss"] / full_loss[r["seed"]] - 1,
                    }
                    for r in mine
                    if r["seed"] in full_loss
                ],
                "download_later_share": mean_spread([r["download_later_share"] for r in mine]),
                "wall_s": mean_spread([r["wall_s"] for r in mine]),
            }
        )
    return {
        "title": raw.get("title", ""),
        "description": raw.get("description", ""),
        "reference": reference,
        "seeds": seeds,
        "points": points,
        "percent": percent,
        "targets": {str(k): v for k, v in targets.items()},
        "loss_targets": {str(k): v for k, v in loss_targets.items()},
        "accuracy_target_met_untuned": trivial,
        "variants": variants,
        "runs": [{k: v for k, v in r.items() if k != "curve"} for r in rows],
        "recorded": [f"{r['variant']}/seed-{r['seed']}" for r in done if r.get("recorded")],
        "curves": {f"{r['variant']}/seed-{r['seed']}": r["curve"] for r in done},
    }


def _pm(stat: tuple[float, float | None] | None, scale: float = 1.0, digits: int = 2) -> str:
    if stat is None:
        return "-"
    mean, spread = stat
    if spread is None:
        return f"{mean * scale:.{digits}f} (1 seed)"
    return f"{mean * scale:.{digits}f} ± {spread * scale:.{digits}f}"


def markdown(table: dict[str, Any]) -> str:
    columns = [
        ("variant", "variant"),
        ("codec", "uplink"),
        ("seeds", "seeds"),
        ("acc", "final acc %"),
        ("loss", "final eval loss"),
        ("up", "uplink MB"),
        ("saving", "uplink saving"),
        ("tgap", "one-off MB up / down (once); uplink saving with it"),
        ("target", "uplink MB to target"),
        ("loss_target", "uplink MB to loss target"),
        ("down", "download MB"),
        ("mem", "client peak MB"),
        ("work", "client steps (fwd / bwd passes, examples)"),
        ("client_s", "client compute s"),
        ("wall", "wall s"),
    ]
    lines = []
    for v in table["variants"]:
        if not v["seeds_done"]:
            lines.append({"variant": v["variant"], "codec": "not run", "seeds": "-"})
            continue
        seeds = ",".join(str(s) for s in v["seeds_done"])
        if v["not_run"]:
            seeds += f" (not run: {','.join(str(s) for s in v['not_run'])})"
        runs = len(v["seeds_done"])
        target = (
            _pm(v["bytes_up_to_target"], 1 / MB, 3)
            if v["bytes_up_to_target"]
            else f"not reached ({v['seeds_reaching_target']}/{runs} seeds)"
        )
        loss_target = (
            _pm(v["bytes_up_to_loss_target"], 1 / MB, 3)
            if v["bytes_up_to_loss_target"]
            else f"not reached ({v['seeds_reaching_loss_target']}/{runs} seeds)"
        )
        if not v["federated"] or not table["targets"]:  # nothing to reach: no reference run
            target = loss_target = "-"
        lines.append(
            {
                "variant": v["variant"],
                "codec": v["codec"],
                "seeds": seeds,
                "acc": _pm(v["final_accuracy"], 100),
                "loss": _pm(v["final_eval_loss"], 1, 4),
                "up": _pm(v["bytes_up_total"], 1 / MB, 3),
                "saving": _ratio(v["uplink_saving_x"]),
                "target": target,
                "loss_target": loss_target,
                "tgap": (
                    f"{v['one_off_bytes_up'][0] / MB:.2f} / {v['one_off_bytes_down'][0] / MB:.2f}"
                    f"; {v['uplink_saving_with_tgap_x']:.2f}x"
                    if any((v.get(f"one_off_bytes_{way}") or [0])[0] for way in ("up", "down"))
                    else "-"
                ),
                "client_s": _pm(v.get("client_train_s"), 1, 0),
                "work": _work(v.get("client_work")),
                "down": _pm(v["bytes_down_total"], 1 / MB, 1),
                "mem": _pm(v["client_peak_mem_bytes"], 1 / MB, 0),
                "wall": _pm(v["wall_s"], 1, 0),
            }
        )
    goals = []
    for seed, target in table["targets"].items():
        loss = table["loss_targets"][seed]["eval_loss"]
        goal = f"accuracy >= {100 * target['accuracy']:.0f} %, " if "accuracy" in target else ""
        goals.append(f"seed {seed}: {goal}eval loss <= {loss:.4f}")
    goal = "; ".join(goals) or "no reference run"
    if table["accuracy_target_met_untuned"]:
        goal += (
            ". The untuned model already meets the accuracy target on "
            + ", ".join(table["accuracy_target_met_untuned"])
            + ": there, reaching it says nothing; the loss target does"
        )
    return "\n".join(
        [
            f"## {table['title']}",
            "",
            table["description"],
            "",
            f"`{table['command']}`",
            "",
            f"Mean ± standard deviation over seeds. Targets, on the per-round curve, from the "
            f"{table['reference']} run of the same seed (its final per-round accuracy - "
            f"{table['points']:g} point, its final per-round eval loss + {table['percent']:g} %): "
            f"{goal}. Uplink and download: the training rounds (round 0 apart: the connection "
            "and TGAP's one-off exchange, given in converged.json).",
            "",
            markdown_table(lines, columns),
            *recorded_note(table),
            *block_targets(table),
        ]
    )


def _ratio(value: float | None) -> str:
    """95.6x; below 1 (full-parameter methods send more than LoRA) with its digits: 0.0068x."""
    if not value:
        return "-"
    return f"{value:.1f}x" if round(value, 1) >= 1 else f"{value:.2g}x"


def recorded_note(table: dict[str, Any]) -> list[str]:
    recorded = table.get("recorded") or []
    if not recorded:
        return []
    return [
        "",
        "Runs whose folders were not on the machine that built this table, read from "
        f"converged.json as an earlier invocation recorded them: {', '.join(recorded)}.",
    ]


def _work(work: dict[str, float] | None) -> str:
    if not work:
        return "-"
    return (
        f"{work['steps']:.0f} ({work['forward']:.0f} / {work['backward']:.0f}, "
        f"{work['examples']:.0f})"
    )


def _steps(variant: dict[str, Any]) -> str:
    steps = variant.get("client_steps")
    return "-" if not steps else f"{steps[0]:.0f}"


def block_targets(table: dict[str, Any]) -> list[str]:
    """FedCyBGD against issue 18's targets, beside the fed-full run of the same matrix."""
    variants = [v for v in table["variants"] if v.get("method") == "fedcybgd"]
    full = next((v for v in table["variants"] if v.get("method") == "fed-full"), None)
    if not variants:
        return []

    def verdict(value: float | None, limit: float) -> str:
        return (
            "-"
            if value is None
            else f"{100 * value:.0f} % " + ("met" if value <= limit else "MISSED")
        )

    lines = []
    for v in variants:
        share = v["download_later_share"]
        pairs = v["eval_loss_vs_fed_full"]
        verdicts = [
            f"seed {x['seed']}: {x['loss']:.4f} vs {x['fed_full']:.4f}, "
            f"{100 * x['relative']:+.1f} % " + ("met" if x["relative"] <= 0 else "MISSED")
            for x in pairs
        ]
        unpaired = [s for s in v["seeds_done"] if s not in {x["seed"] for x in pairs}]
        if unpaired:
            verdicts.append(f"seed {','.join(map(str, unpaired))}: no fed-full run of that seed")
        loss = "; ".join(verdicts) or "-"
        lines.append(
            {
                "variant": v["variant"],
                "steps": _steps(v) + (f" ({_steps(full)})" if full else ""),
                "mem": verdict(v["mem_vs_fed_full"], 0.40),
                "down": verdict(share[0] if share else None, 0.25),
                "loss": loss,
            }
        )
    columns = [
        ("variant", "FedCyBGD variant"),
        ("steps", "client steps (fed-full's)"),
        ("mem", "client peak memory / fed-full's (<= 40 %)"),
        ("down", "download per turn after a node's first / fp32 model (<= 25 %)"),
        ("loss", "final eval loss vs fed-full's, same seed (at or below)"),
    ]
    return ["", markdown_table(lines, columns)]


def write_results(stem: str, table: dict[str, Any]) -> None:
    """converged.json holds every matrix run so far; this one's entry is replaced."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{RESULT_NAME}.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything[stem] = table
    path.write_text(json.dumps(everything, indent=1))
    text = "\n\n".join(markdown(t) for t in everything.values())
    (RESULTS / f"{RESULT_NAME}.md").write_text(text + "\n")
    print(markdown(table))
    print(f"saved {path} and {path.with_suffix('.md')}")


# --- plots -----------------------------------------------------------------------------------


def plot(stem: str, rows: list[dict], table: dict[str, Any]) -> None:
    """Accuracy (if any) and eval loss against training uplink and against client steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return
    by_variant: dict[str, list[dict]] = {}
    for row in done:
        by_variant.setdefault(row["variant"], []).append(row)
    metrics = ["eval_loss"]
    if done[0]["curve"][-1]["accuracy"] is not None:
        metrics.insert(0, "accuracy")
    fig, axes = plt.subplots(len(metrics), 2, figsize=(13, 4.6 * len(metrics)), squeeze=False)
    palette = plt.get_cmap("tab10").colors
    for index, (name, runs) in enumerate(by_variant.items()):
        # Ten colours, then the same colours dashed, then dotted: no two variants look alike.
        color, style = palette[index % 10], ("-", "--", ":")[index // 10 % 3]
        length = min(len(r["curve"]) for r in runs)
        ups = np.array([[p["cum_bytes_up"] for p in r["curve"][:length]] for r in runs]) / MB
        steps = np.arange(length) * runs[0]["local_steps"]
        federated = runs[0]["federated"]
        for (left, right), metric in zip(axes, metrics, strict=True):
            ys = np.array([[p[metric] for p in r["curve"][:length]] for r in runs], dtype=float)
            ys *= 100 if metric == "accuracy" else 1
            mean, low, high = ys.mean(0), ys.min(0), ys.max(0)
            right.plot(steps, mean, style, color=color, label=name)
            right.fill_between(steps, low, high, color=color, alpha=0.15)
            if federated:  # centralized sends nothing: no place on the uplink axis
                left.plot(ups.mean(0), mean, style, color=color, label=name)
                left.fill_between(ups.mean(0), low, high, color=color, alpha=0.15)
    for (left, right), metric in zip(axes, metrics, strict=True):
        label = "per-round accuracy %" if metric == "accuracy" else "per-round eval loss"
        left.set_xscale("symlog", linthresh=0.1)
        left.set_xlabel("cumulative training uplink MB, all clients (log; TGAP left out)")
        right.set_xlabel("local steps per sampled client (rounds x local steps)")
        for ax in (left, right):
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if metric == "eval_loss":
                ax.set_yscale("log")
                plain = FuncFormatter(lambda y, _: f"{y:.2f}")
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(plain)
        left.set_title(f"{label} vs uplink (band: min-max over seeds)", fontsize=10)
        right.set_title(f"{label} vs client steps", fontsize=10)
    axes[0][1].legend(fontsize=8, ncol=2)
    fig.suptitle(table["title"], fontsize=10)
    fig.tight_layout()
    path = RESULTS / f"{stem}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
