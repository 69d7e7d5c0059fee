"""lm-evaluation-harness against fedpress's built-in scorer, on SmolLM2-135M, in one invocation.

    python benchmarks/harness_agreement.py                      # 5 MMLU questions a subject
    python benchmarks/harness_agreement.py --limit 20 --run runs/converged_sst2/seed-1/lora-fedavg

MMLU (the shared test CSVs, the first `--limit` questions of each of the 57 subjects, 0-shot):
accuracy from `fedpress eval` (the built-in scorer) and from `fedpress eval --tasks mmlu`
(the harness with fedpress's shipped task) for the untuned base and for a tuned run, with the
wall time of each. SST-2: the harness's accuracy of the tuned run on exactly the held-out
sentences the run scored itself (the same seeded draw of the test TSV), against the run's
`final_accuracy` in summary.json. The run is the converged SST-2 protocol's LoRA-FedAvg
(benchmarks/converged.py): run that first, or give another SST-2 run folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from common import REPO, SHARED_DATA, markdown_table, quiet, save
from fedpress.config import load_config
from fedpress.data import held_out_rows
from fedpress.harness import run_harness
from fedpress.mcq_eval import run_mcq_eval

DEFAULT_RUN = REPO / "runs" / "converged_sst2" / "seed-0" / "lora-fedavg"


def mmlu_row(label: str, target: str, limit: int, work: Path) -> dict:
    data = str(SHARED_DATA / "mmlu" / "test")
    started = time.perf_counter()
    built_in = run_mcq_eval(target, data=data, limit=limit, out=str(work / f"{label}.json"))
    built_in_s = time.perf_counter() - started
    started = time.perf_counter()
    harness = run_harness(target, "mmlu", data=data, limit=limit, out=str(work / f"{label}-h.json"))
    harness_s = time.perf_counter() - started
    ours, theirs = built_in["subjects"], harness["mmlu"]["subjects"]
    return {
        "model": label,
        "target": target,
        "questions": built_in["questions"],
        "built_in_accuracy": built_in["overall_accuracy"],
        "harness_accuracy": harness["mmlu"]["overall_accuracy"],
        "subjects_differing": sorted(s for s in ours if ours[s] != theirs[s]),
        "built_in_s": built_in_s,
        "harness_s": harness_s,
    }


def sst2_row(run: Path, work: Path) -> dict:
    """The harness on the very sentences the run's final evaluation scored."""
    config = load_config(run / "config.toml")
    data, seed = config.data, config.seed
    with Path(data.eval_source).open(newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header, *rows = list(reader)
    kept = [rows[i] for i in held_out_rows(len(rows), data.eval_size, seed)]
    tsv = work / "run_eval.tsv"
    tsv.write_text("\n".join("\t".join(r) for r in [header, *kept]) + "\n")
    started = time.perf_counter()
    harness = run_harness(str(run), f"sst2={tsv}", out=str(work / "sst2-h.json"))
    summary = json.loads((run / "summary.json").read_text())
    return {
        "run": str(run.relative_to(REPO) if run.is_relative_to(REPO) else run),
        "sentences": len(kept),
        "run_final_accuracy": summary["final_accuracy"],
        "run_final_eval_examples": summary["final_eval_examples"],
        "harness_accuracy": harness["results"]["fedpress_sst2"]["acc,none"],
        "harness_s": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=5, help="MMLU questions per subject")
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a tuned SST-2 run folder")
    args = parser.parse_args()
    quiet()
    run = args.run.resolve()
    if not (run / "summary.json").is_file():
        raise SystemExit(f"{run} holds no finished run: run benchmarks/converged.py first")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mmlu = [
            mmlu_row("smollm2-135m (untuned)", "smollm2-135m", args.limit, work),
            mmlu_row(f"{run.parent.name}/{run.name} (tuned)", str(run), args.limit, work),
        ]
        sst2 = sst2_row(run, work)
    for row in mmlu:
        for key in ("built_in_accuracy", "harness_accuracy"):
            row[key.replace("accuracy", "pct")] = f"{100 * row[key]:.2f}"
        row["differing"] = len(row["subjects_differing"])
        row["seconds"] = f"{row['built_in_s']:.0f} / {row['harness_s']:.0f}"
    table = markdown_table(
        mmlu,
        [
            ("model", "model"),
            ("questions", "MMLU questions"),
            ("built_in_pct", "built-in %"),
            ("harness_pct", "harness %"),
            ("differing", "subjects differing"),
            ("seconds", "wall s built-in / harness"),
        ],
    )
    sst2_line = (
        f"SST-2, {sst2['run']}: harness {100 * sst2['harness_accuracy']:.2f} % on the run's "
        f"{sst2['sentences']} held-out sentences; the run's own final_accuracy "
        f"{100 * sst2['run_final_accuracy']:.2f} % on {sst2['run_final_eval_examples']}."
    )
    print(table)
    print(sst2_line)
    header = (
        f"# lm-evaluation-harness vs fedpress's built-in scorer\n\n"
        f"`python benchmarks/harness_agreement.py --limit {args.limit}`: MMLU 0-shot, the first "
        f"{args.limit} test questions of each subject.\n\n"
    )
    save(
        "harness_agreement",
        {"limit": args.limit, "mmlu": mmlu, "sst2": sst2},
        header + table + "\n\n" + sst2_line,
    )


if __name__ == "__main__":
    main()
