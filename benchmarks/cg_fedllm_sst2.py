"""CG-FedLLM benchmark: SmolLM2-135M / SST-2, Dirichlet(0.5), D1:D2 = 3:7 (SPEC section 1).

Rows: centralized, LoRA-FedAvg uncompressed, cg-fedllm with each autoencoder at 1/64 (latent
fp16), top-k (fp16 values, error feedback) at the cg-fedllm payload's bytes, and one
cg-fedllm run with client-level DP at a target epsilon. Every federated row trains on the same
D2 shares (holdout 0.3 everywhere); the centralized row on the pooled D2.

TGAP is federated once (`fedpress tgap`: clients train on D1 and send their snapshots in Flower
messages) and every architecture is trained on that same collection; its bytes (up: the
snapshots, down: the instructions) are charged to every cg-fedllm row. Shipping the autoencoder
to the clients is counted inside each run's downlink (`ae_bytes_down`). Uplink ratio = FAF
uplink of the row / FAF uplink of uncompressed LoRA-FedAvg (Flower message bytes). Codec share =
client encode + server decode time over the rounds' training part (round wall time minus the
server's evaluation); client times are summed over clients, so with clients running in
parallel it is an upper bound of the share on the critical path.

    python benchmarks/cg_fedllm_sst2.py [--clients 4 --rounds 3 --local-steps 6 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import (
    MB,
    REPO,
    RESULTS,
    SHARED_DATA,
    make_config,
    markdown_table,
    quiet,
    run,
    save,
    sst2_setting,
)

ARCHS = ["resnet3", "cnn1d", "uformer0", "uformer1", "uformer2"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--max-train", type=int, default=1500)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--snapshots", type=int, default=4, help="TGAP snapshots per client")
    parser.add_argument("--ae-steps", type=int, default=150, help="autoencoder training steps")
    parser.add_argument("--compression", type=int, default=64)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--rows", default="centralized,lora-fedavg,cg,topk,dp")
    parser.add_argument("--dp-epsilon", type=float, default=8.0)
    parser.add_argument(
        "--dp-clip", type=float, default=0.01, help="C; 0: median norm of the TGAP updates"
    )
    parser.add_argument("--ae-crop", type=int, default=128, help="autoencoder training crop")
    parser.add_argument(
        "--test-examples", type=int, default=0, help="first N of test.tsv (0: all 872)"
    )
    parser.add_argument("--tgap-from", help="reuse a `fedpress tgap` output folder's snapshots")
    parser.add_argument(
        "--client-cpus", type=int, default=1, help="2 on 2 cores: one client at a time, less memory"
    )
    parser.add_argument("--name", default="cg_fedllm_sst2")
    parser.add_argument("--work", default="cg_fedllm_sst2", help="run folder under results/runs")
    parser.add_argument(
        "--assemble", action="store_true", help="only tabulate rows already measured (no runs)"
    )
    args = parser.parse_args()
    quiet()
    rows_wanted = args.rows.split(",")
    archs = args.archs.split(",")
    base = {
        **sst2_setting(args.clients, args.rounds, args.local_steps, args.max_train),
        "data.max_length": args.max_length,
        "data.holdout_fraction": 0.3,
        "eval.per_round_examples": 50,
        "federation.client_cpus": args.client_cpus,
        "autoencoder.compression": args.compression,
        "autoencoder.snapshots": args.snapshots,
        "autoencoder.train_steps": args.ae_steps,
        "autoencoder.crop": args.ae_crop,
    }
    work = RESULTS / "runs" / args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.test_examples:
        lines = (SHARED_DATA / "sst2" / "test.tsv").read_text().splitlines(keepends=True)
        subset = work / f"test-first{args.test_examples}.tsv"
        subset.write_text("".join(lines[: args.test_examples + 1]))
        base["data.eval_source"] = str(subset)
    rows: list[dict] = []
    analysis: dict[str, dict] = {}
    state: dict = {"baseline_up": None}

    def record(label: str, config_over: dict, tgap_meta: dict | None = None) -> dict:
        out = work / label
        started = time.perf_counter()
        if (out / "summary.json").is_file():  # measured by an earlier invocation: reuse it
            summary = json.loads((out / "summary.json").read_text())
            wall = summary["wall_s"]
        elif args.assemble:
            return {}
        else:
            summary = run(make_config({**base, **config_over}), out)
            wall = time.perf_counter() - started
        lines = (
            (out / "metrics.jsonl").read_text().splitlines()
            if (out / "metrics.jsonl").is_file()
            else []
        )
        rounds = [json.loads(line) for line in lines]
        faf_up = sum(r["bytes_up"] for r in rounds if r["round"] > 0)
        train_part = sum(r["round_wall_s"] - r["eval_s"] for r in rounds if r["round"] > 0)
        tgap_up = (tgap_meta or {}).get("tgap_bytes_up", 0) or 0
        if label == "lora-fedavg":
            state["baseline_up"] = faf_up
        baseline = state["baseline_up"]
        eps = summary.get("dp_epsilon")
        row = {
            "row": label,
            "accuracy_%": f"{100 * summary['final_accuracy']:.2f}",
            "eval_loss": f"{summary['final_eval_loss']:.4f}",
            "up_total_MB": f"{(faf_up + tgap_up) / MB:.3f}" if rounds else "0",
            "up_faf_MB": f"{faf_up / MB:.3f}" if rounds else "0",
            "ae_down_MB": f"{summary.get('ae_bytes_down', 0) / MB:.3f}",
            "ratio": f"1/{baseline / faf_up:.1f}" if baseline and faf_up else "",
            "codec_share_%": f"{100 * summary['codec_s'] / train_part:.2f}" if train_part else "",
            "epsilon": "" if eps is None else f"{eps:.2f}",
            "tgap_cos": "" if tgap_meta is None else f"{tgap_meta['validation']['cosine']:.3f}",
            "tgap_snr_db": "" if tgap_meta is None else f"{tgap_meta['validation']['snr_db']:.2f}",
            "wall_s": f"{wall:.0f}",
        }
        rows.append(row)
        print(row, flush=True)
        table = markdown_table(rows, COLUMNS)
        save(args.name, {"args": vars(args), "rows": rows, "analysis": analysis}, table)
        return summary

    # Most important rows first: a run cut short by the clock keeps what it measured.
    if rows_wanted != ["ae"]:  # "ae": only TGAP and the autoencoders (no FAF runs)
        record("lora-fedavg", {"method": "lora-fedavg"})
    if rows_wanted == ["baseline"]:
        return

    # TGAP once, federated: D1 snapshots travel in Flower messages; then one AE per architecture.
    tgap_dir = work / "tgap"
    snapshots = tgap_dir / "autoencoder" / "snapshots.safetensors"
    if args.tgap_from and not snapshots.is_file():
        shutil.copytree(Path(args.tgap_from), tgap_dir, dirs_exist_ok=True)
    if not snapshots.is_file():
        fedpress(
            [
                "tgap",
                "--out",
                str(tgap_dir),
                *sets({**base, "method": "cg-fedllm", "autoencoder.arch": archs[0]}),
            ]
        )
    metas: dict[str, dict] = {}

    def autoencoder(arch: str) -> None:
        """Train `arch` on the shared TGAP collection (cached), and analyse it."""
        folder = work / f"ae-{arch}"
        if args.assemble and not (folder / "autoencoder" / "analysis.json").is_file():
            return
        if not (folder / "autoencoder" / "autoencoder.json").is_file():
            fedpress(
                [
                    "tgap",
                    "--snapshots",
                    str(snapshots),
                    "--out",
                    str(folder),
                    *sets({**base, "method": "cg-fedllm", "autoencoder.arch": arch}),
                ]
            )
        metas[arch] = json.loads((folder / "autoencoder" / "autoencoder.json").read_text())
        if not (folder / "autoencoder" / "analysis.json").is_file():
            fedpress(["ae-analyze", str(folder / "autoencoder"), "--snapshots", str(snapshots)])
        analysis[arch] = json.loads((folder / "autoencoder" / "analysis.json").read_text())

    if rows_wanted == ["ae"]:
        for arch in archs:
            autoencoder(arch)
        save(args.name + "_ae", {"args": vars(args), "analysis": analysis}, json.dumps(analysis))
        return

    def cg_row(arch: str) -> None:
        autoencoder(arch)
        if "cg" not in rows_wanted or arch not in metas:
            return
        record(
            f"cg-fedllm-{arch}",
            {
                "method": "cg-fedllm",
                "autoencoder.arch": arch,
                "autoencoder.checkpoint": str(work / f"ae-{arch}" / "autoencoder"),
            },
            metas[arch],
        )

    for arch in archs:  # every autoencoder first: the reconstruction table costs no FAF run
        autoencoder(arch)
    cg_row(archs[0])
    if "topk" in rows_wanted and archs[0] in metas:
        numel = metas[archs[0]]["layout"]["numel"]
        tensors = len(metas[archs[0]]["shapes"])
        payload = latent_payload_bytes(metas[archs[0]])
        # top-k with fp16 values: 6 bytes per kept entry (int32 index + fp16 value).
        fraction = max(payload / 6 - tensors, tensors) / numel
        record(
            f"topk-{fraction:.4f}",
            {
                "method": "lora-fedavg",
                "uplink_codec": "topk",
                "codec.topk.fraction": fraction,
                "codec.topk.value_dtype": "fp16",
            },
        )
    if "dp" in rows_wanted and archs[0] in metas:
        arch = archs[0]
        clip = args.dp_clip or median_norm(snapshots)
        record(
            f"cg-fedllm-{arch}+dp",
            {
                "method": "cg-fedllm",
                "autoencoder.arch": arch,
                "autoencoder.checkpoint": str(work / f"ae-{arch}" / "autoencoder"),
                "privacy.enabled": True,
                "privacy.target_epsilon": args.dp_epsilon,
                "privacy.clip_norm": clip,
            },
            metas[arch],
        )
    for arch in archs[1:]:
        cg_row(arch)
    if "centralized" in rows_wanted:
        record("centralized", {"method": "centralized"})
    table = markdown_table(rows, COLUMNS)
    snr = markdown_table(
        [
            {
                "arch": a,
                "cos": f"{r['validation']['cosine']:.4f}",
                "snr_db": f"{r['validation']['snr_db']:.2f}",
                **{
                    f"n{n['sigma']:g}": f"{n['cosine']:.3f} / {n['snr_db']:.1f}" for n in r["noise"]
                },
            }
            for a, r in analysis.items()
        ],
        [("arch", "autoencoder"), ("cos", "val cosine"), ("snr_db", "val SNR dB")]
        + [(f"n{s:g}", f"sigma {s:g}: cos / SNR dB") for s in (5e-5, 5e-4, 5e-3, 5e-2, 5e-1)],
    )
    if any(str(r.get("row", "")).endswith("+dp") for r in rows):
        table += (
            '\n\n+dp: the epsilon covers the FAF uploads (dp_covers = ["faf"]); its '
            "autoencoder was trained on these clients' TGAP snapshots, which it does not cover."
        )
    full = (
        table + "\n\nReconstruction on the TGAP validation snapshots (per-element means) and "
        "under Gaussian noise added to the update:\n\n" + snr
    )
    save(args.name, {"args": vars(args), "rows": rows, "analysis": analysis}, full)
    print(full)


def latent_payload_bytes(meta: dict) -> int:
    """Bytes of one cg-fedllm payload: the fp16/fp32 latent plus one fp32 scale per tensor."""
    itemsize = 2 if meta["latent_dtype"] == "fp16" else 4
    return math.prod(meta["latent_shape"]) * itemsize + 4 * len(meta["shapes"])


def median_norm(snapshots: Path) -> float:
    from safetensors.torch import load_file

    flat = load_file(str(snapshots))
    norms: dict[str, float] = {}
    for key, t in flat.items():
        index = key.split("/")[0]
        norms[index] = norms.get(index, 0.0) + float(t.double().pow(2).sum())
    values = sorted(math.sqrt(v) for v in norms.values())
    return values[len(values) // 2]


def sets(overrides: dict) -> list[str]:
    out = []
    for key, value in overrides.items():
        literal = (
            json.dumps(value)
            if isinstance(value, str)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
        out += ["--set", f"{key}={literal}"]
    return out


def fedpress(argv: list[str]) -> None:
    """The CLI in a child process (the same code path as a user's `fedpress ...`)."""
    env_path = str(REPO / "src")
    subprocess.run(
        [sys.executable, "-m", "fedpress.cli", *argv],
        check=True,
        env={**os.environ, "PYTHONPATH": env_path},
    )


COLUMNS = [
    ("row", "run"),
    ("accuracy_%", "test acc % (--test-examples)"),
    ("eval_loss", "eval loss"),
    ("up_total_MB", "uplink MB (incl. TGAP)"),
    ("up_faf_MB", "uplink MB (FAF only)"),
    ("ae_down_MB", "AE shipped MB (down)"),
    ("ratio", "FAF uplink vs uncompressed"),
    ("codec_share_%", "encode+decode % of round"),
    ("epsilon", "DP epsilon (delta 1e-5)"),
    ("tgap_cos", "TGAP val cosine"),
    ("tgap_snr_db", "TGAP val SNR dB"),
    ("wall_s", "wall s"),
]


if __name__ == "__main__":
    main()
