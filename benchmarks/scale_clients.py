"""Scale in one machine: 10, 50 and 100 simulated clients with the same 5 sampled per round.

Flower's simulation engine runs clients on a fixed pool of actors, so memory should follow
the clients active at once, not the total. Peak memory is the summed RSS of this process and
everything it started (Ray's daemons and workers), sampled every 0.2 s from /proc.

    python benchmarks/scale_clients.py [--totals 10,50,100] [--sampled 5] [--model tiny-llama]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from common import MB, RESULTS, make_config, markdown_table, quiet, run, save

PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root: int) -> int:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            pages = int((entry / "statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        rss[int(entry.name)] = pages * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakSampler:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            time.sleep(0.2)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--totals", default="10,50,100")
    parser.add_argument("--sampled", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny-llama")
    args = parser.parse_args()
    quiet()
    rows = []
    for total in map(int, args.totals.split(",")):
        config = make_config(
            {
                "method": "lora-fedavg",
                "model": args.model,
                "num_clients": total,
                "rounds": args.rounds,
                "federation.fraction_train": args.sampled / total,
                "federation.client_cpus": 1,
                "train.local_steps": 2,
                "data.builtin_size": 2000,
                "eval.per_round_examples": 50,
            }
        )
        out = RESULTS / "runs" / f"scale-{total}"
        started = time.perf_counter()
        with PeakSampler() as sampler:
            summary = run(config, out)
        wall = time.perf_counter() - started
        rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        trained = rounds[1:]
        later = [r["round_wall_s"] for r in trained[1:]] or [float("nan")]
        rows.append(
            {
                "total": total,
                "sampled": trained[0]["clients_sampled"],
                "peak_MB": f"{sampler.peak / MB:.0f}",
                "round_s": f"{sum(later) / len(later):.1f}",
                "first_round_s": f"{trained[0]['round_wall_s']:.1f}",
                "wall_s": f"{wall:.0f}",
                "accuracy": f"{100 * summary['final_accuracy']:.1f}",
            }
        )
        print(rows[-1], flush=True)
    columns = [
        ("total", "clients in total"),
        ("sampled", "sampled per round"),
        ("peak_MB", "peak RSS of the run's process tree, MB"),
        ("first_round_s", "round 1 s (actor start-up)"),
        ("round_s", "later rounds, mean s"),
        ("wall_s", "wall s"),
    ]
    table = markdown_table(rows, columns) + f"\n\nModel: {args.model}."  # the figure's model
    print(table)
    save("scale_clients", {"args": vars(args), "rows": rows}, table)


if __name__ == "__main__":
    main()
