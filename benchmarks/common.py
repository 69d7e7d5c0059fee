"""Shared pieces of the benchmark scripts: run a config in-process, tabulate, save."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fedpress.accounting import MB  # noqa: F401 - re-exported for the benchmark scripts
from fedpress.config import RunConfig, load_config
from fedpress.console import quiet  # noqa: F401 - re-exported for the benchmark scripts

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def sst2_setting(clients: int, rounds: int, local_steps: int, max_train: int) -> dict[str, Any]:
    """The foundation benchmark's setting: SST-2, Dirichlet(0.5) over labels, all clients."""
    return {
        "model": "smollm2-135m",
        "num_clients": clients,
        "rounds": rounds,
        "seed": 0,
        "data.source": str(SHARED_DATA / "sst2" / "train.tsv"),
        "data.eval_source": str(SHARED_DATA / "sst2" / "test.tsv"),
        "data.eval_size": 0,  # all of it: eval_size caps eval_source
        "data.max_train_examples": max_train,
        "data.partition": "dirichlet",
        "data.dirichlet_alpha": 0.5,
        "data.max_length": 96,
        "train.local_steps": local_steps,
        "train.batch_size": 8,
        "train.lr": 1e-3,
        "eval.batch_size": 32,
    }


def make_config(overrides: dict[str, Any]) -> RunConfig:
    return load_config(None, [f"{k}={_literal(v)}" for k, v in overrides.items()])


def _literal(value: Any) -> str:
    return (
        json.dumps(value)
        if isinstance(value, (str, list))
        else str(value).lower()
        if isinstance(value, bool)
        else str(value)
    )


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    """The same code path as `fedpress run`."""
    from fedpress.runner import run_config

    return run_config(config, out_dir)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def mean_sd(values: list[float], digits: int = 2, signed: bool = False) -> str:
    """ "mean ± sample sd" (the mean alone for one value, "-" for none)."""
    if not values:
        return "-"
    mean = f"{statistics.mean(values):{'+' if signed else ''}.{digits}f}"
    return mean + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def save(name: str, payload: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(f"saved {RESULTS / name}.json and .md")
