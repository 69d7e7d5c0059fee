"""Long runs stay healthy: server and client memory, open file descriptors, time per round and
the run folder's size, sampled at the end of every round of one long run.

    python benchmarks/soak.py --rounds 300                       # the simulation engine
    python benchmarks/soak.py --deploy --rounds 100 --nodes 3    # SuperLink + 3 SuperNodes

The run: lora-fedavg on tiny-llama, 4 clients (the simulation; 2 sampled a round) or one per
SuperNode (all of them every round), 1 local step, a checkpoint every round. A sampler thread
in this process watches the run's metrics.jsonl and, when a round's line appears, reads with
psutil the resident memory and open file descriptors of
- simulation: the server (this process: the ServerApp runs in it) and the client side (every
  Ray process under it: raylet, GCS, the client actors);
- deployment: the server side (SuperLink + the ServerApp process) and the client side
  (the SuperNodes and whatever ClientApp processes are alive at that moment).
Per round also: `round_wall_s` from metrics.jsonl and the bytes of every file in the run
folder (Flower's logs are kept outside it). Verdict per series: "flat" when the mean of the
last 10 % of rounds is within 10 % of the mean of rounds 10-20.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import mean

import psutil

from common import RESULTS, make_config, markdown_table, quiet, save

SERVER_NAMES = ("flower-superlink", "flwr-serverapp")
CLIENT_NAMES = ("flower-supernode", "flwr-clientapp")


def setting(args: argparse.Namespace) -> dict:
    return {
        "model": "tiny-llama",
        "num_clients": args.nodes if args.deploy else 4,
        "rounds": args.rounds,
        "train.local_steps": 1,
        "data.builtin_size": 400,
        "data.eval_size": 16,
        "eval.per_round_examples": 8,
        "eval.federated_fraction": 0.0,
        "federation.fraction_train": 1.0 if args.deploy else 0.5,
        "federation.round_timeout_s": 300,
        "federation.client_cpus": 0 if args.deploy else os.cpu_count() or 1,
        "runtime.threads": 1,
    }


def processes(deploy: bool) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(server side, client side) processes now."""
    me = psutil.Process()
    kids = me.children(recursive=True)
    if not deploy:
        return [me], kids
    server, client = [], []
    for proc in kids:
        try:
            line = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if any(name in line for name in SERVER_NAMES):
            server.append(proc)
        elif any(name in line for name in CLIENT_NAMES):
            client.append(proc)
    return server, client


def measure(procs: list[psutil.Process]) -> tuple[int, int]:
    rss = fds = 0
    for proc in procs:
        try:
            rss += proc.memory_info().rss
            fds += proc.num_fds()
        except psutil.Error:  # a ClientApp process that just ended
            continue
    return rss, fds


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def sampler(out: Path, deploy: bool, samples: list[dict], stop: threading.Event) -> None:
    metrics = out / "metrics.jsonl"
    seen = 0
    while not stop.is_set():
        lines = metrics.read_text().splitlines() if metrics.is_file() else []
        for line in lines[seen:]:
            record = json.loads(line)
            server, client = processes(deploy)
            server_rss, server_fds = measure(server)
            client_rss, client_fds = measure(client)
            samples.append(
                {
                    "round": record["round"],
                    "server_rss_mb": round(server_rss / 1e6, 1),
                    "client_rss_mb": round(client_rss / 1e6, 1),
                    "server_fds": server_fds,
                    "client_fds": client_fds,
                    "client_processes": len(client),
                    "round_wall_s": round(record["round_wall_s"], 3),
                    "folder_mb": round(folder_bytes(out) / 1e6, 3),
                    "metrics_jsonl_mb": round(metrics.stat().st_size / 1e6, 3),
                }
            )
        seen = len(lines)
        time.sleep(0.2)


def verdict(samples: list[dict], key: str) -> dict:
    rounds = [s for s in samples if s["round"] > 0]
    early = [s[key] for s in rounds if 10 <= s["round"] <= 20]
    tail = [s[key] for s in rounds[-max(1, len(rounds) // 10) :]]
    early_mean, tail_mean = mean(early), mean(tail)
    change = (tail_mean - early_mean) / early_mean if early_mean else 0.0
    return {
        "series": key,
        "rounds_10_20": round(early_mean, 3),
        "last_10pct": round(tail_mean, 3),
        "change_pct": round(100 * change, 1),
        "verdict": "flat" if abs(change) <= 0.10 else "grows" if change > 0 else "falls",
    }


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [s["round"] for s in samples]
    panels = [
        (("server_rss_mb", "client_rss_mb"), "resident memory, MB"),
        (("server_fds", "client_fds"), "open file descriptors"),
        (("round_wall_s",), "round wall time, s"),
        (("folder_mb",), "run folder, MB"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (keys, label) in zip(axes.flat, panels, strict=True):
        for key in keys:
            ax.plot(rounds, [s[key] for s in samples], label=key)
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--deploy", action="store_true", help="SuperLink + SuperNodes")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--no-run", action="store_true", help="only rebuild soak.md")
    args = parser.parse_args()
    if args.no_run:
        write_report(None, None)
        return
    if args.rounds < 30:
        sys.exit("soak: --rounds must be at least 30 (the verdict compares rounds 10-20)")
    quiet()
    config = make_config(setting(args))
    samples: list[dict] = []
    stop = threading.Event()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        watcher = threading.Thread(target=sampler, args=(out, args.deploy, samples, stop))
        watcher.start()
        try:
            if args.deploy:
                from common import REPO
                from fedpress.local_deployment import launch_local_deployment

                config_path = Path(tmp) / "run.toml"
                config.save(config_path)
                launch_local_deployment(
                    REPO / "deploy",
                    config_path,
                    out,
                    num_supernodes=args.nodes,
                    timeout_s=6 * 3600,
                    log_dir=Path(tmp) / "flower-logs",
                )
            else:
                from common import run

                run(config, out)
            time.sleep(1.0)  # the sampler reads the last line
        finally:
            stop.set()
            watcher.join()
    wall = time.perf_counter() - started
    mode = "deployment" if args.deploy else "simulation"
    keys = ("server_rss_mb", "client_rss_mb", "server_fds", "client_fds", "round_wall_s")
    verdicts = [verdict(samples, key) for key in keys]
    at_20 = next(s for s in samples if s["round"] == 20)
    growth = samples[-1]["folder_mb"] - at_20["folder_mb"]
    metrics_growth = samples[-1]["metrics_jsonl_mb"] - at_20["metrics_jsonl_mb"]
    result = {
        "mode": mode,
        "rounds": args.rounds,
        "wall_s": round(wall, 1),
        "load_at_end": os.getloadavg(),
        "verdicts": verdicts,
        "folder_mb_growth_after_round_20": round(growth, 3),
        "metrics_jsonl_mb_growth_after_round_20": round(metrics_growth, 3),
        "samples": samples,
        "command": " ".join(sys.argv),
    }
    plot(samples, RESULTS / f"soak_{mode}.png", f"soak, {mode}: {args.rounds} rounds")
    write_report(mode, result)


def write_report(mode: str | None, result: dict | None) -> None:
    """soak.{json,md} with this run beside the other mode's recorded one."""
    previous = RESULTS / "soak.json"
    runs = json.loads(previous.read_text())["runs"] if previous.is_file() else {}
    if mode is not None:
        runs[mode] = result
    sections = []
    for name, run in sorted(runs.items()):
        table = markdown_table(run["verdicts"], [(k, k) for k in run["verdicts"][0]])
        sections.append(
            f"## {name}: {run['rounds']} rounds, {run['wall_s']:.0f} s\n\n"
            f"`python {run['command']}`\n\n![{name}](soak_{name}.png)\n\n{table}\n\n"
            f"Run folder growth from round 20 to the end: "
            f"{run['folder_mb_growth_after_round_20']} MB, of which metrics.jsonl "
            f"{run['metrics_jsonl_mb_growth_after_round_20']} MB (one line a round); the rest "
            "is what the run writes once at its end (final weights, summary, model card). The "
            "checkpoint is replaced each round, not accumulated.\n"
        )
    print("\n".join(sections))
    save("soak", {"runs": runs}, "# Soak runs\n\n" + "\n".join(sections))


if __name__ == "__main__":
    main()
