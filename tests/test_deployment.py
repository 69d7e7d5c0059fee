"""The same ServerApp/ClientApp on Flower's deployment engine: a real SuperLink and two real
SuperNodes on loopback, each SuperNode with its partition in --node-config."""

import json

from conftest import REPO
from fedpress.flower.deployment import launch_local_deployment


def test_superlink_and_two_supernodes_complete_two_rounds(tmp_path, tiny_run_toml):
    config_path = tiny_run_toml
    out = tmp_path / "out"
    result = launch_local_deployment(
        REPO / "deploy", config_path, out, num_supernodes=2, timeout_s=540, check=False
    )
    assert result.returncode == 0, f"{result.status}: {result.stdout[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 2
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients_ok"] == 2 and r["bytes_up"] > 0 for r in rounds[1:])
