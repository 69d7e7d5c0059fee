"""Secure deployment: a TLS SuperLink with SuperNode authentication, two enrolled SuperNodes
that complete a fedpress run, and one SuperNode with an unknown key that is refused.

One deployment serves both checks: the unenrolled SuperNode is started once the enrolled
ones are connected and is refused while the run goes on.
"""

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO
from fedpress.local_deployment import launch_local_deployment

pytestmark = pytest.mark.slow  # real Flower runs (simulation or deployment)


def test_tls_supernode_auth_runs_enrolled_nodes_and_refuses_unknown_key(tmp_path, tiny_run_toml):
    certs = tmp_path / "certs"  # test-only CA, server cert and SuperNode keys
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_test_certs.py"), str(certs)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config_path = tiny_run_toml
    out = tmp_path / "out"

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
    )

    # The run over TLS with the two enrolled SuperNodes completed.
    assert result.returncode == 0, f"{result.status}: {result.stdout[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["num_clients"] == 2
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["clients_ok"] == 2 and r["bytes_up"] > 0 for r in rounds[1:])

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
