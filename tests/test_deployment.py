"""The same ServerApp/ClientApp on Flower's deployment engine, secured: a TLS SuperLink with
SuperNode authentication, two enrolled SuperNodes on loopback (each naming the data file and
its part in --node-config, the helper's default) and one SuperNode with an unknown key, which
is refused while the run goes on. After a complete round one enrolled SuperNode is killed: the
second round completes with the other client alone.

One deployment serves all three checks, since each costs most of a minute: Flower's SuperLink
notices a killed node only when its heartbeats stop (30-60 s, not configurable in Flower
1.41), and the refused node's exit is bounded by `startup_timeout_s`. Nodes with their own
files: test_cross_silo.py."""

import json
import os
import re
import signal
import subprocess
import sys
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


def test_tls_deployment_refuses_unknown_key_and_survives_a_dead_node(tmp_path):
    certs = tmp_path / "certs"  # test-only CA, server cert and SuperNode keys
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_test_certs.py"), str(certs)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = load_config(
        None,
        [
            "model=tiny-gpt2",
            "num_clients=2",
            "rounds=2",
            "train.local_steps=2",
            "federation.round_timeout_s=120",
            "federation.min_replies=1",
            # QLoRA on the deployment engine: every node process loads the base in 4 bits
            # (and refuses to train on a base bitsandbytes did not quantize).
            "runtime.quantize=4bit",
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
            timeout_s=540,
            check=False,
            tls_dir=certs,
            authenticate=True,
            unenrolled_supernodes=1,
            startup_timeout_s=90,  # also the bound on how long the refused node may take to exit
            expendable_supernodes=[1],
        )
    finally:
        stop.set()
        killer.join()

    # The run over TLS completed: round 1 with both enrolled nodes, round 2 with the survivor.
    assert result.returncode == 0, f"{result.status}: {result.stdout[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 2
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[1]["clients_ok"] == 2 and rounds[1]["bytes_up"] > 0
    assert (rounds[2]["clients_ok"], rounds[2]["clients_failed"]) == (1, 1)

    superlink_log = result.logs["superlink"].read_text()
    assert "Uvicorn running on https://127.0.0.1" in superlink_log  # HTTPS only
    for i in range(2):
        node_log = result.logs[f"supernode-{i}"].read_text()
        assert "SuperNode ID:" in node_log
        assert "Uvicorn running on https://127.0.0.1" in node_log  # its Runtime API too

    # The SuperNode with an unknown key was refused and exited (bounded by startup_timeout_s).
    code = result.unenrolled_returncodes["unenrolled-0"]
    refused_log = result.logs["unenrolled-0"].read_text()
    assert code is not None, f"unenrolled SuperNode was still running:\n{refused_log[-2000:]}"
    assert code != 0
    assert "Failed to initialize the connection to the SuperLink" in refused_log
    assert "[code: 2004] Failed to activate SuperNode." in refused_log
    assert "SuperNode ID:" not in refused_log
    assert "No SuperNode found with the given public key" in superlink_log
    # Only the two enrolled nodes were ever activated.
    activated = set(re.findall(r"Activated node_id=(\d+)", superlink_log))
    assert len(activated) == 2, activated
