"""Robust aggregation against members whose replies are well formed but harmful (issue 29).

SST-2 in the converged protocol (examples/matrices/converged_sst2.toml's base: SmolLM2-135M,
8 clients, Dirichlet 0.5, 20 rounds x 2 local steps x batch 8, lr 3e-4 cosine), with 6 of the
8 clients sampled a round so that the 2 attackers (partitions 0 and 1) are in 27 of 28 rounds'
samples; every attack x every rule, per seed; final accuracy on the 400 test sentences
against the clean run with the plain mean of the same seed.

    python benchmarks/robust.py --seeds 0,1                          # all of it (hours)
    python benchmarks/robust.py --seeds 0 --attacks clean,scaled --rules mean,median
    python benchmarks/robust.py --no-run                             # tables from what ran
    python benchmarks/robust.py --smoke                              # tiny-llama: it works

Each run is `runs/robust_sst2/seed-<k>/<attack>-<rule>/`; a finished one is skipped, an
interrupted one resumes from its checkpoint, so the table fills in over several sessions.

The attacks are this benchmark's code, never a product setting: the attacking clients run
fedpress's own client and then change what they send (uplink codec `none`: the reply is the
fp32 change itself), all of it well formed (right keys, shapes, dtypes, finite values):
- `scaled`: the change x 50;
- `sign-flip`: the change x -1;
- `random`: Gaussian noise with 10x the norm of the client's honest change;
- `label-flip`: the client trains on its own share with every label swapped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from common import REPO, make_config, markdown_table, quiet, save
from fedpress.compare import read_matrix
from fedpress.config import flatten
from fedpress.flower import client_app as honest
from fedpress.flower import node, protocol
from fedpress.flower.simulation import simulate

ATTACKERS = (0, 1)  # partition ids
ATTACKS = ["clean", "scaled", "sign-flip", "random", "label-flip"]
RULES = {
    "mean": {},
    "median": {"aggregation.rule": "median"},
    # 6 updates a round: cut 2 at each end (int(0.34 x 6) = 2), as many as there are attackers.
    "trimmed_mean": {"aggregation.rule": "trimmed_mean", "aggregation.trim_fraction": 0.34},
    "multikrum": {"aggregation.rule": "multikrum", "aggregation.attackers": 2},
    "norm_bound": {"aggregation.norm_bound": "median"},
}
OUT = REPO / "runs" / "robust_sst2"


def protocol_setting(smoke: bool) -> dict[str, Any]:
    """The converged SST-2 base, 6 of 8 clients a round, uplink uncompressed."""
    _, base, _ = read_matrix(REPO / "examples/matrices/converged_sst2.toml")
    flat = {k: v for k, v in flatten(base).items() if not k.startswith("autoencoder.")}
    for key in ("data.source", "data.eval_source"):
        flat[key] = str((REPO / flat[key]).resolve())  # relative to the repository
    flat.update({"method": "lora-fedavg", "federation.fraction_train": 0.75})
    if smoke:
        flat.update(
            {
                "model": "tiny-llama",
                "rounds": 2,
                "train.local_steps": 1,
                "data.eval_size": 32,
                "eval.per_round_examples": 16,
            }
        )
    return flat


# --------------------------------------------------------------------------- the attackers


def attacking_app(attack: str) -> ClientApp:
    """fedpress's ClientApp, whose attacker partitions change what they send."""
    app = ClientApp()
    app.query()(honest.query)
    app.evaluate()(honest.evaluate)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        if attack == "label-flip":
            flip_labels_of(ATTACKERS)
        reply = honest.train(msg, context)
        if partition not in ATTACKERS or attack in ("clean", "label-flip") or reply.has_error():
            return reply
        change = reply.content[protocol.UPDATE][protocol.PACKED].numpy().view(np.float32)
        if attack == "scaled":
            sent = change * 50
        elif attack == "sign-flip":
            sent = -change
        else:  # random
            instructions = msg.content.config_records[protocol.INSTRUCTIONS]
            rng = np.random.default_rng([partition, int(instructions[protocol.SERVER_ROUND])])
            noise = rng.standard_normal(change.size).astype(np.float32)
            sent = noise * (10 * np.linalg.norm(change) / max(np.linalg.norm(noise), 1e-12))
        reply.content[protocol.UPDATE] = ArrayRecord(
            {protocol.PACKED: Array(sent.astype(np.float32).view(np.uint8))}
        )
        return reply

    return app


def flip_labels_of(partitions: tuple[int, ...]) -> None:
    """Make this process's node data swap the labels of `partitions`' training shares (a
    classification example's answer becomes its other choice). Installed once per process."""
    if getattr(node.own_data, "flips_labels", False):
        return
    own_data = node.own_data

    def flipped(context: Context, config: Any, task: Any) -> Any:
        data = own_data(context, config, task)
        if int(context.node_config.get("partition-id", -1)) not in partitions:
            return data
        swapped = [
            dataclasses.replace(e, answer=next(c for c in e.choices if c != e.answer))
            for e in data.share
        ]
        return dataclasses.replace(data, share=swapped)

    flipped.flips_labels = True  # type: ignore[attr-defined]
    node.own_data = flipped


# --------------------------------------------------------------------------- runs and table


def run_one(setting: dict, attack: str, rule: str, seed: int, out: Path) -> None:
    if (out / "summary.json").is_file():
        print(f"skip {out} (finished)", flush=True)
        return
    config = make_config({**setting, **RULES[rule], "seed": seed})
    resume = (out / "checkpoint.safetensors").is_file()
    print(f"run {out}{' (resuming)' if resume else ''}", flush=True)
    simulate(config, out, resume=resume, client_app=attacking_app(attack))


def collect(root: Path, seeds: list[int]) -> list[dict]:
    rows = []
    for attack in ATTACKS:
        for rule in RULES:
            finals = {}
            for seed in seeds:
                summary = root / f"seed-{seed}" / f"{attack}-{rule}" / "summary.json"
                if summary.is_file():
                    finals[seed] = json.loads(summary.read_text())["final_accuracy"] * 100
            rows.append({"attack": attack, "rule": rule, "accuracy": finals})
    return rows


def table(rows: list[dict]) -> tuple[str, list[dict]]:
    clean = {r["rule"]: r["accuracy"] for r in rows if r["attack"] == "clean"}
    reference = clean.get("mean", {})
    out = []
    for row in rows:
        done = sorted(row["accuracy"])
        if not done:
            continue
        values = [row["accuracy"][s] for s in done]
        gaps = [row["accuracy"][s] - reference[s] for s in done if s in reference]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        out.append(
            {
                "attack": row["attack"],
                "rule": row["rule"],
                "seeds": ",".join(map(str, done)),
                "accuracy": f"{statistics.mean(values):.2f}{spread}",
                "gap": f"{statistics.mean(gaps):+.2f}" if gaps else "-",
                # The target bounds the harm: at most 2 points (clean: 1) below, every seed.
                "within": (
                    "-"
                    if not gaps
                    else "yes"
                    if all(g >= -(1 if row["attack"] == "clean" else 2) for g in gaps)
                    else "no"
                ),
            }
        )
    columns = [
        ("attack", "attack"),
        ("rule", "rule"),
        ("seeds", "seeds"),
        ("accuracy", "final acc %"),
        ("gap", "vs clean mean (points)"),
        ("within", "at most 2 (clean: 1) points below"),
    ]
    return markdown_table(out, columns), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--no-run", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny-llama, 2 rounds, no saving")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    attacks, rules = args.attacks.split(","), args.rules.split(",")
    unknown = (set(attacks) - set(ATTACKS)) | (set(rules) - set(RULES))
    if unknown:
        sys.exit(
            f"unknown attack or rule: {sorted(unknown)} (attacks {ATTACKS}, rules {list(RULES)})"
        )
    root = args.out or (OUT.with_name("robust_smoke") if args.smoke else OUT)
    setting = protocol_setting(args.smoke)
    quiet(False)
    if not args.no_run:
        for seed in seeds:
            for attack in attacks:
                for rule in rules:
                    run_one(setting, attack, rule, seed, root / f"seed-{seed}" / f"{attack}-{rule}")
    text, rows = table(collect(root, seeds))
    header = (
        "## Robust aggregation on SST-2: 2 of 8 clients attack\n\n"
        f"`python benchmarks/robust.py --seeds {args.seeds}`\n\n"
        "Converged protocol (SmolLM2-135M, 20 rounds x 2 local steps x batch 8, lr 3e-4 "
        "cosine), 6 of 8 clients a round, partitions 0 and 1 attacking; final accuracy on the "
        "400 SST-2 test sentences; the gap is to the clean run with the plain mean of the same "
        "seed. Target: with the right rule an attack loses at most 2 points against it "
        "(plain mean more), the clean run with each rule at most 1. A row appears once its run has "
        f"finished: {len(rows)} of {len(ATTACKS) * len(RULES)} (attack, rule) pairs so far.\n\n"
    )
    print(header + text)
    if not args.smoke:
        save("robust", {"setting": setting, "rows": rows}, header + text)


if __name__ == "__main__":
    main()
