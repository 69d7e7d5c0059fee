"""The server's peak memory for fed-full on SmolLM2-135M with 2, 4 and 8 clients, the round's
replies held and summed at the end (`aggregation.stream = false`, fedpress before it streamed)
against folded in as they arrive (the default).

    python benchmarks/server_memory.py                    # 2, 4, 8 clients, both ways
    python benchmarks/server_memory.py --clients 2,4      # a subset

Each run is one `fedpress run` process (the ServerApp runs in it; the clients in Ray actors,
one at a time: `federation.client_cpus` = every core) of one round, every client sampled, one
local step each. The figures are that process's, from /proc/<pid>/status read every 0.1 s
until it exits: `VmHWM` (peak resident, all it maps: the pages of Ray's shared-memory object
store that carried messages through it count too) and the highest `RssAnon` (its own heap:
the server's model for evaluation, the global state, whatever the round's replies cost it,
the interpreter and libraries). The clients' memory is not in it.
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


def resident(pid: int) -> dict[str, int]:
    """From /proc/<pid>/status: VmHWM (peak resident, everything mapped) and RssAnon (the
    process's own heap now: no files, no shared memory), in bytes; {} once it is gone."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
    except OSError:
        return {}
    if "VmHWM" not in fields or "RssAnon" not in fields:  # exiting: its memory is gone
        return {}
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmHWM", "RssAnon")}


def measure(clients: int, stream: bool, out: Path) -> dict:
    overrides = [*SETTING, f"num_clients={clients}", f"aggregation.stream={str(stream).lower()}"]
    command = [sys.executable, "-m", "fedpress.cli", "run", "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    cores = len(os.sched_getaffinity(0))
    command += ["--set", f"federation.client_cpus={cores}"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = heap = 0
    while process.poll() is None:
        now = resident(process.pid)
        peak, heap = max(peak, now.get("VmHWM", 0)), max(heap, now.get("RssAnon", 0))
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
        "server_heap_peak_bytes": heap,
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
                "heap": f"{row['server_heap_peak_bytes'] / MB:.0f}",
                "models": f"{row['server_heap_peak_bytes'] / row['model_message_bytes']:.1f}",
                "ratio": f"{row['server_heap_peak_bytes'] / held['server_heap_peak_bytes']:.2f}",
                "loss": f"{row['final_eval_loss']:.4f}",
                "wall": row["wall_s"],
            }
        )
    model_mb = rows[0]["model_message_bytes"] / MB
    table = (
        "## fed-full server peak memory, SmolLM2-135M, one round, every client sampled\n\n"
        f"`python benchmarks/server_memory.py --clients {args.clients}`\n\n"
        "The `fedpress run` process (the ServerApp; the clients run in Ray actors and are not "
        "counted): its resident high-water mark (VmHWM: everything it maps, the pages of Ray's "
        "shared-memory object store it touched included) and the highest of its own heap "
        "(RssAnon, no files or shared memory) sampled every 0.1 s. The model as one message: "
        f"{model_mb:.0f} MB.\n\n"
        + markdown_table(
            table_rows,
            [
                ("clients", "clients"),
                ("replies", "replies"),
                ("peak", "peak resident MB (VmHWM)"),
                ("heap", "peak own heap MB (RssAnon)"),
                ("models", "own heap / model message"),
                ("ratio", "own heap vs held"),
                ("loss", "final eval loss"),
                ("wall", "wall s"),
            ],
        )
    )
    print(table)
    save("server_memory", {"setting": SETTING, "rows": rows}, table)


if __name__ == "__main__":
    main()
