"""CG-FedLLM in its paper's small setting (issue 30): 3 clients, all sampled, 5 rounds, 2 local
epochs, scored on MMLU questions it never trained on.

1. The split: every subject's MMLU test questions, shuffled with a fixed seed (the same for
   every run seed), half to `split/train`, half to `split/eval` (disjoint; `split.json` says
   how many of each).
2. The runs: benchmarks/matrices/cg_fedllm_mmlu.toml through benchmarks/converged.py (one compare
   per seed; finished variants skipped, an interrupted one resumed), which also records its
   curves in converged.{json,md} and cg_fedllm_mmlu.png.
3. The score: `fedpress eval` (0-shot, subject line first, the letter with the highest
   log-probability) of every finished run and of the untuned model, on the first `--limit`
   questions per subject of the eval half.

    python benchmarks/cg_fedllm_mmlu.py --seeds 0,1
    python benchmarks/cg_fedllm_mmlu.py --no-run          # score what ran, rebuild the tables

Writes benchmarks/results/cg_fedllm_mmlu.{json,md} and cg_fedllm_mmlu_scores.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from common import MB, REPO, RESULTS, SHARED_DATA, markdown_table, mean_sd, quiet, save
from converged import read_run
from fedpress.compare_report import load_run

MATRIX = REPO / "benchmarks" / "matrices" / "cg_fedllm_mmlu.toml"
OUT = REPO / "runs" / "cg_fedllm_mmlu"
SPLIT_SEED = 0
BASE_MODEL = "smollm2-135m"


def split_mmlu(source: Path, dest: Path) -> dict[str, Any]:
    """Each subject's questions, shuffled, half for training and half for scoring."""
    record = dest / "split.json"
    if record.is_file():
        return json.loads(record.read_text())
    counts = {}
    for file in sorted(source.glob("*_test.csv")):
        with file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames, list(reader)
        random.Random(f"{SPLIT_SEED}/{file.name}").shuffle(rows)
        half = len(rows) // 2
        for part, chosen in (("train", rows[:half]), ("eval", rows[half:])):
            (dest / part).mkdir(parents=True, exist_ok=True)
            with (dest / part / file.name).open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(chosen)
        counts[file.stem.removesuffix("_test")] = {"train": half, "eval": len(rows) - half}
    split = {
        "source": str(source),
        "seed": SPLIT_SEED,
        "subjects": len(counts),
        "train_questions": sum(c["train"] for c in counts.values()),
        "eval_questions": sum(c["eval"] for c in counts.values()),
        "per_subject": counts,
    }
    record.write_text(json.dumps(split, indent=1))
    return split


def score(target: str, out: Path, data: Path, limit: int) -> dict[str, Any]:
    """`fedpress eval`'s MMLU scorer, cached next to what it scored."""
    if out.is_file():
        cached = json.loads(out.read_text())
        if cached.get("limit") == limit and cached.get("data") == str(data):
            return cached
    from fedpress.mcq_eval import run_mcq_eval

    print(f"scoring {target}", flush=True)
    return run_mcq_eval(
        target, data=str(data), limit=limit, batch_size=16, out=str(out), show=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument(
        "--limit", type=int, default=10, help="eval-half questions per subject (~3 min a model)"
    )
    parser.add_argument("--no-run", action="store_true", help="score finished runs only")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    split = split_mmlu(SHARED_DATA / "mmlu" / "test", OUT / "split")
    if not args.no_run:
        subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "converged.py"),
                str(MATRIX),
                "--seeds",
                args.seeds,
                "--out",
                str(OUT),
            ],
            check=True,
            cwd=REPO,  # the matrix's data paths are relative to the repository
        )
    quiet()
    eval_half = OUT / "split" / "eval"
    base = score(BASE_MODEL, OUT / "base-mmlu.json", eval_half, args.limit)
    variants = [v["name"] for v in tomllib.loads(MATRIX.read_text())["variant"]]
    scores: dict[str, dict[int, dict[str, Any]]] = {}
    for seed in seeds:
        folder = OUT / f"seed-{seed}"
        if not folder.is_dir():
            continue
        # Every variant's folder, not compare.json's list: a later invocation on a subset of
        # the variants rewrites that list with the subset.
        for name in variants:
            run = folder / name
            if not (run / "summary.json").is_file():
                continue
            report = score(str(run), run / "mmlu-eval.json", eval_half, args.limit)
            measured = read_run(name, seed, load_run(run))
            scores.setdefault(name, {})[seed] = {
                "mmlu": report["overall_accuracy"],
                "questions": report["questions"],
                "bytes_up": measured["bytes_up_total"],
                "tgap_bytes_up": measured["tgap_bytes_up"],
                "wall_s": measured["wall_s"],
            }
    rows = table_rows(scores, base)
    text = markdown(rows, base, split, args)
    print(text)
    save("cg_fedllm_mmlu", {"split": split, "base": base, "scores": scores, "rows": rows}, text)
    plot(scores, base)


def table_rows(scores: dict[str, dict[int, dict]], base: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: MMLU mean ± spread over seeds, and the paired gap (same seed) to both
    references the paper claims to beat."""
    rows = []
    for name, by_seed in scores.items():
        values = [100 * by_seed[s]["mmlu"] for s in sorted(by_seed)]
        row = {
            "variant": name,
            "seeds": ",".join(map(str, sorted(by_seed))),
            "mmlu": mean_sd(values),
            "per_seed": " / ".join(f"{v:.2f}" for v in values),
            "vs_base": f"{statistics.mean(values) - 100 * base['overall_accuracy']:+.2f}",
            "uplink": f"{statistics.mean(r['bytes_up'] for r in by_seed.values()) / MB:.2f}",
            "tgap": f"{statistics.mean(r['tgap_bytes_up'] for r in by_seed.values()) / MB:.2f}",
            "wall": f"{statistics.mean(r['wall_s'] or 0 for r in by_seed.values()):.0f}",
        }
        for reference in ("lora-fedavg", "centralized"):
            paired = [
                100 * (by_seed[s]["mmlu"] - scores[reference][s]["mmlu"])
                for s in sorted(by_seed)
                if s in scores.get(reference, {})
            ]
            row[f"vs_{reference}"] = mean_sd(paired, signed=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict], base: dict, split: dict, args: argparse.Namespace) -> str:
    n = base["questions"]
    p = base["overall_accuracy"]
    noise = 100 * math.sqrt(p * (1 - p) / n)
    columns = [
        ("variant", "row"),
        ("seeds", "seeds"),
        ("mmlu", "MMLU acc % (mean ± sd)"),
        ("per_seed", "per seed"),
        ("vs_base", "vs untuned"),
        ("vs_lora-fedavg", "vs LoRA-FedAvg, same seed (points)"),
        ("vs_centralized", "vs centralized, same seed (points)"),
        ("uplink", "training uplink MB"),
        ("tgap", "TGAP uplink MB"),
        ("wall", "wall s"),
    ]
    return "\n".join(
        [
            "## CG-FedLLM in its small setting: SmolLM2-135M / MMLU (issue 30)",
            "",
            f"`python benchmarks/cg_fedllm_mmlu.py --seeds {args.seeds} --limit {args.limit}`",
            "",
            f"Trained on one half of each subject's MMLU test questions "
            f"({split['train_questions']} questions, of which the matrix draws 172), scored "
            f"0-shot by `fedpress eval` on the first {args.limit} questions per subject of the "
            f"other half ({n} questions, {split['subjects']} subjects; disjoint from training). "
            f"Setting: benchmarks/matrices/cg_fedllm_mmlu.toml. The untuned model scores "
            f"{100 * p:.2f} %; one score's binomial standard error at that accuracy is "
            f"{noise:.2f} points (the rows are scored on the same questions, so their gaps "
            "vary less than that).",
            "",
            markdown_table(rows, columns),
            "",
            "cg-rowlinear trains its autoencoder on the TGAP snapshots cg-resnet3 recorded in "
            "the same seed (`snapshots_from`), so the TGAP uplink is paid once, in cg-resnet3's "
            "row; both autoencoders are shipped in their run's downlink.",
        ]
    )


def plot(scores: dict[str, dict[int, dict]], base: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not scores:
        return
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for index, by_seed in enumerate(scores.values()):
        values = [100 * r["mmlu"] for r in by_seed.values()]
        ax.bar(index, statistics.mean(values), color="tab:blue", alpha=0.5)
        ax.scatter([index] * len(values), values, color="black", zorder=3, s=14)
    ax.axhline(100 * base["overall_accuracy"], color="gray", ls="--", label="untuned")
    ax.set_xticks(range(len(scores)), list(scores), fontsize=8)
    ax.set_ylabel("MMLU accuracy % (held-out half)")
    ax.set_title("CG-FedLLM's small setting: bars = mean, dots = seeds", fontsize=10)
    low = min(min(100 * r["mmlu"] for r in s.values()) for s in scores.values())
    ax.set_ylim(min(low, 100 * base["overall_accuracy"]) - 3, None)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "cg_fedllm_mmlu_scores.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
