"""`fedpress plan` held against what fedpress measured: SmolLM2-135M runs recorded on this
project's 2-core CPU machine, planned from the very configs that ran them.

- `benchmarks/results/converged.json`: every recorded run of the converged SST-2 and Alpaca
  protocols, seed 0 (its training-round bytes, round 0 apart, and its client peak);
- `docs/compare_memory_smollm2.md`: the client-memory comparison (3 clients, 1 round), read
  from its summary table (MB up and down, client peak MB).

    python benchmarks/plan_vs_measured.py          # ~1 minute; no run, no weights
    python benchmarks/plan_vs_measured.py RUN ...  # run folders instead (their summary.json)

Writes benchmarks/results/plan_vs_measured.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import MB, REPO, markdown_table, quiet, save
from fedpress.compare import load_matrix
from fedpress.config import RunConfig, load_config
from fedpress.plan import architecture, plan_run

PROTOCOLS = {"converged_sst2": "converged_sst2.toml", "converged_alpaca": "converged_alpaca.toml"}
MEMORY_DOC = REPO / "docs" / "compare_memory_smollm2.md"


def planned(config: RunConfig, training_only: bool) -> dict[str, Any]:
    """Planned bytes (training rounds only, as converged.json counts them, or the run's
    totals) and client peak."""
    plan, _ = plan_run(config, architecture(config, None, None)[0])
    rounds = [t for r, t in plan.rounds.items() if r > 0 or not training_only]
    return {
        "up": sum(sum(t.up) for t in rounds),
        "down": sum(sum(t.down) for t in rounds),
        "peak": plan.memory.configured.peak,
    }


def row(source: str, name: str, method: str, plan: dict, measured: dict) -> dict[str, Any]:
    """One line of the table: `plan` and `measured` hold "up", "down" (bytes), "peak"."""

    def share(a: float, b: float) -> str:
        return f"{100 * (a / b - 1):+.4f} %" if b else ("exact" if a == b else "-")

    up, down, peak = measured["up"], measured["down"], measured["peak"]
    return {
        "source": source,
        "variant": name,
        "method": method,
        "planned_up": plan["up"],
        "measured_up": up,
        "up": share(plan["up"], up),
        "planned_down": plan["down"],
        "measured_down": down,
        "down": share(plan["down"], down),
        "planned_peak_mb": round(plan["peak"] / MB),
        "measured_peak_mb": round(peak / MB),
        "peak_ratio": round(plan["peak"] / peak, 2) if peak else None,
    }


def recorded_runs() -> list[dict[str, Any]]:
    results = json.loads((REPO / "benchmarks" / "results" / "converged.json").read_text())
    rows = []
    for key, matrix in PROTOCOLS.items():
        runs = {r["variant"]: r for r in results[key]["runs"] if r["seed"] == 0}
        for variant in load_matrix(REPO / "examples" / "matrices" / matrix).variants:
            run = runs.get(variant.name)
            if run is None or run.get("status") != "done":
                continue
            measured = {
                "up": run["bytes_up_total"],
                "down": run["bytes_down_total"],
                "peak": run["client_peak_mem_bytes"],
            }
            plan = planned(variant.config, training_only=True)
            source = f"{key}.json seed 0"
            rows.append(row(source, variant.name, variant.config.method, plan, measured))
    return rows


def memory_comparison() -> list[dict[str, Any]]:
    """docs/compare_memory_smollm2.md's summary table (MB to 3 decimals: bytes to 1 kB)."""
    lines = [line for line in MEMORY_DOC.read_text().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[1:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=False))
        if cells.get("variant") and cells.get("client peak mem MB", "").isdigit():
            table[cells["variant"]] = cells
    rows = []
    matrix = load_matrix(REPO / "examples" / "matrices" / "memory_smollm2.toml")
    for variant in matrix.variants:
        cells = table[variant.name]
        plan = planned(variant.config, training_only=False)
        keys = {"up": "MB up", "down": "MB down", "peak": "client peak mem MB"}
        measured = {k: round(float(cells[column]) * MB) for k, column in keys.items()}
        rows.append(row(MEMORY_DOC.name, variant.name, variant.config.method, plan, measured))
    return rows


def folders(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for path in map(Path, paths):
        summary = json.loads((path / "summary.json").read_text())
        config = load_config(path / "config.toml")
        plan = planned(config, training_only=False)
        measured = {
            "up": summary["bytes_up_total"],
            "down": summary["bytes_down_total"],
            "peak": summary["client_peak_mem_bytes"],
        }
        rows.append(row(str(path), path.name, config.method, plan, measured))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run folders (default: the recorded results)")
    args = parser.parse_args()
    quiet()
    rows = folders(args.runs) if args.runs else memory_comparison() + recorded_runs()
    columns = [
        ("source", "measured in"),
        ("variant", "variant"),
        ("method", "method"),
        ("planned_up", "bytes up, planned"),
        ("measured_up", "measured"),
        ("up", "planned - measured"),
        ("planned_down", "bytes down, planned"),
        ("measured_down", "measured"),
        ("down", "planned - measured"),
        ("planned_peak_mb", "client peak MB, planned"),
        ("measured_peak_mb", "measured"),
        ("peak_ratio", "planned / measured"),
    ]
    table = markdown_table(rows, columns)
    print(table)
    if not args.runs:
        save(
            "plan_vs_measured",
            {"command": "python benchmarks/plan_vs_measured.py", "rows": rows},
            table,
        )


if __name__ == "__main__":
    main()
