"""The same ServerApp/ClientApp on Flower's deployment engine: a real SuperLink and two real
SuperNodes on loopback, each naming the data file and its part in --node-config (the helper's
default). After a complete round one SuperNode is killed: the second round completes with the
other client alone (Flower's SuperLink notices a killed node only when its heartbeats stop,
30-60 s later: the longest part of this test). Nodes with their own files: test_cross_silo.py."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from fedpress.config import load_config
from fedpress.local_deployment import launch_local_deployment

pytestmark = pytest.mark.slow  # real SuperLink and SuperNode processes


def kill_supernode_after_round(out, round_number: int, index: int, stop: threading.Event) -> None:
    """SIGKILL SuperNode `index` (and its SuperExec) once round `round_number` is logged."""
    while not stop.is_set():
        metrics = out / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) > round_number:
            break
        time.sleep(0.5)
    else:
        return
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-supernode" in cmdline and f"partition-id={index} " in cmdline + " ":
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_a_round_on_superlink_and_supernodes_then_one_node_dies(tmp_path):
    config = load_config(
        None,
        [
            "model=tiny-gpt2",
            "num_clients=2",
            "rounds=2",
            "train.local_steps=2",
            "federation.round_timeout_s=120",
            "federation.min_replies=1",
        ],
    )
    config_path = tmp_path / "run.toml"
    config.save(config_path)
    out = tmp_path / "out"
    stop = threading.Event()
    killer = threading.Thread(target=kill_supernode_after_round, args=(out, 1, 1, stop))
    killer.start()
    try:
        result = launch_local_deployment(
            REPO / "deploy",
            config_path,
            out,
            num_supernodes=2,
            timeout_s=600,
            check=False,
            expendable_supernodes=[1],
        )
    finally:
        stop.set()
        killer.join()
    assert result.returncode == 0, f"{result.status}: {result.stdout[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 2
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["clients_ok"] == 2 and rounds[1]["bytes_up"] > 0
    assert (rounds[2]["clients_ok"], rounds[2]["clients_failed"]) == (1, 1)
