"""The server's peak memory for fed-full on SmolLM2-135M with 2, 4 and 8 clients, the round's
replies held and summed at the end (`aggregation.stream = false`, fedpress before it streamed)
against folded in as they arrive (the default).

    python benchmarks/server_memory.py                    # 2, 4, 8 clients, both ways
    python benchmarks/server_memory.py --clients 2,4      # a subset

Each run is one `fedpress run` process (the ServerApp runs in it; the clients in Ray actors,
one at a time: `federation.client_cpus` = every core) of one round, every client sampled, one
local step each. The figure is that process's resident high-water mark (`VmHWM` in
/proc/<pid>/status, read every 0.1 s until it exits): the server's model for evaluation, the
global state, whatever the round's replies cost it, and the interpreter with its libraries.
The clients' memory is not in it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MB, markdown_table, save

SETTING = [
    "model=smollm2-135m",
    "method=fed-full",
    "rounds=1",
    "train.local_steps=1",
    "train.batch_size=2",
    "data.max_length=32",
    "data.builtin_size=400",
    "data.eval_size=16",
    "eval.per_round_examples=16",
    "eval.federated_fraction=0",
]


def high_water_mark(pid: int) -> int:
    """The process's peak resident bytes so far (VmHWM), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(clients: int, stream: bool, out: Path) -> dict:
    overrides = [*SETTING, f"num_clients={clients}", f"aggregation.stream={str(stream).lower()}"]
    command = [sys.executable, "-m", "fedpress.cli", "run", "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    cores = len(os.sched_getaffinity(0))
    command += ["--set", f"federation.client_cpus={cores}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, high_water_mark(process.pid))
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"fedpress run failed ({clients} clients, stream={stream}):\n{stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "clients": clients,
        "stream": stream,
        "server_peak_bytes": peak,
        # Round 1's download to one client: the whole model as one message.
        "model_message_bytes": rounds[1]["bytes_down_per_client"][0],
        "bytes_up_total": summary["bytes_up_total"],
        "final_eval_loss": summary["final_eval_loss"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="2,4,8")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clients in [int(c) for c in args.clients.split(",")]:
            for stream in (False, True):
                row = measure(clients, stream, Path(tmp) / f"{clients}-{stream}")
                print(json.dumps(row), flush=True)
                rows.append(row)
    table_rows = []
    for row in rows:
        held = next(r for r in rows if r["clients"] == row["clients"] and not r["stream"])
        table_rows.append(
            {
                "clients": row["clients"],
                "replies": "folded in as they arrive" if row["stream"] else "held to the end",
                "peak": f"{row['server_peak_bytes'] / MB:.0f}",
                "models": f"{row['server_peak_bytes'] / row['model_message_bytes']:.1f}",
                "ratio": f"{row['server_peak_bytes'] / held['server_peak_bytes']:.2f}",
                "loss": f"{row['final_eval_loss']:.4f}",
                "wall": row["wall_s"],
            }
        )
    model_mb = rows[0]["model_message_bytes"] / MB
    table = (
        "## fed-full server peak memory, SmolLM2-135M, one round, every client sampled\n\n"
        f"`python benchmarks/server_memory.py --clients {args.clients}`\n\n"
        "Resident high-water mark of the `fedpress run` process (the ServerApp; the clients run "
        f"in Ray actors and are not counted). The model as one message: {model_mb:.0f} MB.\n\n"
        + markdown_table(
            table_rows,
            [
                ("clients", "clients"),
                ("replies", "replies"),
                ("peak", "server peak MB"),
                ("models", "peak / model message"),
                ("ratio", "vs held"),
                ("loss", "final eval loss"),
                ("wall", "wall s"),
            ],
        )
    )
    print(table)
    save("server_memory", {"setting": SETTING, "rows": rows}, table)


if __name__ == "__main__":
    main()
