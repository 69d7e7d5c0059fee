"""`fedpress plan` held against a real run: the tests that run a method call
`assert_plan_matches(run_folder)` on the folder they produced, so every method's plan is
checked against measured bytes without a federated run of its own (docs/plan.md)."""

from __future__ import annotations

import json
from pathlib import Path

from fedpress.config import load_config
from fedpress.plan import architecture, plan_run

# Flower draws run and node ids at random and a reply reports its client's own figures: a
# message's metadata and metrics can differ from the plan's typical ones by a few bytes.
BYTES_PER_MESSAGE = 8
# ... and the plan does not know which of a random-init model's weights start equal (the
# norms' ones: ~600 bytes a tensor in a whole-model message that Flower ships once).
SHARE = 0.01


def assert_plan_matches(run_dir: Path) -> None:
    """The plan of the run folder's config.toml has the run's messages, round by round, and
    their bytes (summary.json's totals) within `SHARE` and a few bytes a message."""
    config = load_config(run_dir / "config.toml")
    summary = json.loads((run_dir / "summary.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    measured = {r["round"]: r for r in map(json.loads, lines)}
    arch, _ = architecture(config, None, None)
    plan, _ = plan_run(config, arch)
    for direction in ("up", "down"):
        planned_total = sum(sum(getattr(t, direction)) for t in plan.rounds.values())
        measured_total = summary[f"bytes_{direction}_total"]
        count = sum(len(r[f"bytes_{direction}_per_client"]) for r in measured.values())
        slack = max(SHARE * measured_total, BYTES_PER_MESSAGE * count)
        assert abs(planned_total - measured_total) <= slack, (
            f"{config.method} bytes {direction}: planned {planned_total}, measured {measured_total}"
        )
        for number, record in measured.items():
            sent = record[f"bytes_{direction}_per_client"]
            traffic = plan.rounds.get(number)
            planned = getattr(traffic, direction) if traffic else []
            assert len(planned) == len(sent), (
                f"{config.method} round {number} {direction}: {len(planned)} planned "
                f"messages, {len(sent)} sent"
            )
