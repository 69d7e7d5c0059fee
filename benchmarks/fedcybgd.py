"""FedCyBGD against issue 5's targets, measured on the ready-made matrices.

Runs `fedpress compare` on each matrix (variants finished in an earlier run are skipped), then
checks every fedcybgd variant against the fed-full variant of the same matrix (the best by eval
loss if there are several), which ran at the same number of client optimizer steps:

- client peak memory at most 40 % of fed-full's: `client_peak_mem_bytes`, the peak resident
  memory during training with the weights the client holds (runs from before that measure
  recorded what a training turn adds under this key; the saved results are such runs), and
  what training adds (`client_train_mem_bytes`) beside it where recorded;
- upload one block: bytes up per turn against the largest block's fp32 bytes;
- download after a node's first turn at most 25 % of the full model (counted from the messages);
- quality no worse than fed-full: test accuracy (where the task has one) and eval loss.

    python benchmarks/fedcybgd.py [--matrix M ...] [--runs DIR] [--no-run]

Prints the table and writes benchmarks/results/fedcybgd_targets.{md,json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common import MB, REPO, markdown_table, quiet, save
from fedpress.compare import run_matrix
from fedpress.compare_report import VariantResult, client_steps, load_results

MATRICES = [
    REPO / "examples" / "matrices" / "fedcybgd_sst2.toml",
    REPO / "examples" / "matrices" / "fedcybgd_alpaca.toml",
]
MEMORY_TARGET = 0.40
DOWNLOAD_TARGET = 0.25


def target_rows(matrix: str, results: list[VariantResult]) -> list[dict[str, Any]]:
    """One row per finished fedcybgd variant, each target as figure and verdict."""
    done = [r for r in results if r.finished]
    full_runs = [r for r in done if r.method == "fed-full"]
    if not full_runs:
        raise SystemExit(f"{matrix}: no finished fed-full variant to compare against")
    # With several fed-full runs (learning rates), the bar is the best of them by eval loss.
    full = min(full_runs, key=lambda r: (r.summary or {})["final_eval_loss"])
    base = full.summary or {}
    rows = []
    for r in (r for r in done if r.method == "fedcybgd"):
        s = r.summary or {}
        # Peak resident memory with the weights (runs before the shared measure recorded only
        # what training added, under the same key); and what training adds, when recorded.
        memory = s["client_peak_mem_bytes"] / base["client_peak_mem_bytes"]
        train = s.get("client_train_mem_bytes")
        train_share = (
            train / base["client_train_mem_bytes"]
            if train and base.get("client_train_mem_bytes")
            else None
        )
        block_bytes = 4 * s["trainable_params_per_client"]
        upload = s["upload_bytes_per_turn"] / block_bytes
        download = s["download_bytes_per_turn"]["later_share_of_full_model"]
        accuracy = s.get("final_accuracy")
        has_accuracy = accuracy is not None and base.get("final_accuracy") is not None
        accuracy_gap = 100 * (accuracy - base["final_accuracy"]) if has_accuracy else None
        loss_gap = s["final_eval_loss"] - base["final_eval_loss"]
        rows.append(
            {
                "matrix": matrix,
                "variant": r.name,
                "fed-full variant": full.name,
                "client steps": client_steps(r),
                "fed-full steps": client_steps(full),
                "memory vs fed-full": memory,
                "memory met": memory <= MEMORY_TARGET,
                "train memory vs fed-full": train_share,
                "upload / one block": upload,
                "upload met": upload <= 1.01,  # message framing adds a few hundred bytes
                "download later turns / model": download,
                "download met": download is not None and download <= DOWNLOAD_TARGET,
                "accuracy - fed-full (pts)": accuracy_gap,
                "eval loss - fed-full": loss_gap,
                "quality met": loss_gap <= 0 and (accuracy_gap is None or accuracy_gap >= 0),
                "eval loss": s["final_eval_loss"],
                "fed-full eval loss": base["final_eval_loss"],
                "block MB": block_bytes / MB,
            }
        )
    return rows


def _display(row: dict[str, Any]) -> dict[str, str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    accuracy = row["accuracy - fed-full (pts)"]
    download = row["download later turns / model"]
    return {
        "matrix": row["matrix"],
        "variant": row["variant"],
        "against": row["fed-full variant"],
        "steps (fed-full)": f"{row['client steps']} ({row['fed-full steps']})",
        "peak mem vs fed-full (<= 40 %)": f"{100 * row['memory vs fed-full']:.0f} % "
        + verdict(row["memory met"]),
        "train mem vs fed-full": "-"
        if row.get("train memory vs fed-full") is None
        else f"{100 * row['train memory vs fed-full']:.0f} %",
        "MB up / turn vs one block": f"{row['upload / one block']:.3f} x {row['block MB']:.1f} "
        + verdict(row["upload met"]),
        "download, later turns (<= 25 % of model)": "-"
        if download is None
        else f"{100 * download:.1f} % " + verdict(row["download met"]),
        "accuracy vs fed-full": "-" if accuracy is None else f"{accuracy:+.2f} pts",
        "eval loss vs fed-full": f"{row['eval loss']:.4f} vs {row['fed-full eval loss']:.4f}",
        "quality no worse": verdict(row["quality met"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--matrix", action="append", type=Path, help="default: both matrices")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="compare folders' parent")
    parser.add_argument(
        "--no-run", action="store_true", help="only check the variants that already finished"
    )
    args = parser.parse_args()
    quiet()
    rows: list[dict[str, Any]] = []
    for matrix in args.matrix or MATRICES:
        folder = args.runs / matrix.stem
        if not args.no_run:
            run_matrix(matrix, folder)
        _, results = load_results(folder)
        rows += target_rows(matrix.stem, results)
    shown = [_display(row) for row in rows]
    table = markdown_table(shown, [(key, key) for key in shown[0]])
    print(table)
    save("fedcybgd_targets", {"rows": rows}, table)


if __name__ == "__main__":
    main()
