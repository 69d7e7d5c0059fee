"""The same ServerApp/ClientApp on Flower's deployment engine: a real SuperLink and two real
SuperNodes on loopback, each SuperNode with its partition in --node-config. After two complete
rounds one SuperNode is killed: the third round completes with the other client alone."""

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


def test_two_rounds_on_superlink_and_supernodes_then_one_node_dies(tmp_path):
    config = load_config(
        None,
        [
            "model=tiny-gpt2",
            "num_clients=2",
            "rounds=3",
            "train.local_steps=2",
            "federation.round_timeout_s=120",
            "federation.min_replies=1",
        ],
    )
    config_path = tmp_path / "run.toml"
    config.save(config_path)
    out = tmp_path / "out"
    stop = threading.Event()
    killer = threading.Thread(target=kill_supernode_after_round, args=(out, 2, 1, stop))
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
    assert summary["rounds"] == 3 and summary["num_clients"] == 2
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert all(r["clients_ok"] == 2 and r["bytes_up"] > 0 for r in rounds[1:3])
    assert (rounds[3]["clients_ok"], rounds[3]["clients_failed"]) == (1, 1)


@pytest.mark.parametrize(
    "method_args",
    [
        # Delta sync: each node's copy of the model lives in Context.state, which the
        # deployment engine keeps while it starts a new ClientApp process for every message.
        ["method=fedcybgd", "cybgd.delta_sync=true", "cybgd.prune_ratio=0.5"],
        # TGAP (train.tgap messages, snapshots from each node's D1 share), then FAF.
        ["method=cg-fedllm", "autoencoder.train_steps=5", "autoencoder.snapshots=2"],
    ],
    ids=["fedcybgd-delta-sync", "cg-fedllm-tgap"],
)
def test_methods_with_client_state_complete_on_the_deployment_engine(tmp_path, method_args):
    config = load_config(
        None,
        [
            "model=tiny-llama",
            "num_clients=2",
            "rounds=2",
            "train.local_steps=1",
            "data.builtin_size=300",
            "eval.per_round_examples=20",
            "federation.round_timeout_s=240",
            *method_args,
        ],
    )
    config_path = tmp_path / "run.toml"
    config.save(config_path)
    out = tmp_path / "out"
    result = launch_local_deployment(
        REPO / "deploy", config_path, out, num_supernodes=2, timeout_s=600, check=False
    )
    assert result.returncode == 0, f"{result.status}: {result.stdout[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert summary["clients_failed_total"] == 0
    assert all(r["clients_failed"] == 0 and r["clients_ok"] > 0 for r in rounds[1:])
    if config.method == "fedcybgd":
        assert summary["turns_failed"] == 0
        # Round 2's downloads are deltas to what each node kept: far below the whole model.
        assert summary["download_bytes_per_turn"]["later_mean"] < summary["full_model_bytes"]
    else:
        assert summary["tgap_in_run"] and summary["tgap_snapshots"] == 2 * 2
