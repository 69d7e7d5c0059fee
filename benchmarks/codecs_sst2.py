"""Codec benchmark: LoRA-FedAvg on SmolLM2-135M / SST-2 with each uplink codec.

Same data setting as the foundation benchmark (8 clients, Dirichlet(0.5) over labels, all
clients every round), shorter training so that every codec fits in one invocation on 2 cores.
Uplink bytes and the compression ratio are counted from the Flower messages actually sent
(framing and metrics included), against the uncompressed run of the same invocation. Codec
time is client encode + server decode, as a share of the round's training part (round wall
time minus the server's evaluation).

    python benchmarks/codecs_sst2.py [--codecs none,fp16,int8] [--rounds 3] [--local-steps 4]
"""

from __future__ import annotations

import argparse
import json
import time

from common import MB, RESULTS, make_config, markdown_table, quiet, run, save, sst2_setting

ALL_CODECS = ["none", "fp16", "bf16", "int8", "int4", "topk", "powersgd", "sign", "qsgd"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--codecs", default=",".join(ALL_CODECS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-train", type=int, default=4000)
    parser.add_argument("--name", default="codecs_sst2")
    args = parser.parse_args()
    quiet()
    codecs = args.codecs.split(",")
    if codecs[0] != "none":
        codecs = ["none", *[c for c in codecs if c != "none"]]  # the baseline comes first
    base = {
        **sst2_setting(args.clients, args.rounds, args.local_steps, args.max_train),
        "method": "lora-fedavg",
        "model": args.model,
        "eval.per_round_examples": 100,
    }
    rows, curves = [], {}
    baseline_up = None
    for codec in codecs:
        out = RESULTS / "runs" / f"{args.name}-{codec}"
        started = time.perf_counter()
        summary = run(make_config({**base, "uplink_codec": codec}), out)
        wall = time.perf_counter() - started
        rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train_part = sum(r["round_wall_s"] - r["eval_s"] for r in rounds[1:])
        baseline_up = baseline_up or summary["bytes_up_total"]
        curves[codec] = [(r["cum_bytes_up"] / MB, r["accuracy"]) for r in rounds]
        rows.append(
            {
                "codec": codec,
                "MB_up": f"{summary['bytes_up_total'] / MB:.3f}",
                "ratio": f"{baseline_up / summary['bytes_up_total']:.2f}x",
                "accuracy_%": f"{100 * summary['final_accuracy']:.2f}",
                "eval_loss": f"{summary['final_eval_loss']:.4f}",
                "codec_share_%": f"{100 * summary['codec_s'] / train_part:.2f}",
                "wall_s": f"{wall:.0f}",
            }
        )
        print(rows[-1], flush=True)
        # Save after every codec: a long benchmark that is cut short keeps what it measured.
        table = markdown_table(rows, COLUMNS)
        save(args.name, {"args": vars(args), "rows": rows, "curves": curves}, table)
        plot(curves, RESULTS / f"{args.name}_accuracy_vs_uplink.png")
    print(table)


COLUMNS = [
    ("codec", "uplink codec"),
    ("MB_up", "uplink MB total"),
    ("ratio", "vs fp32"),
    ("accuracy_%", "test acc % (872)"),
    ("eval_loss", "eval loss"),
    ("codec_share_%", "codec % of round"),
    ("wall_s", "wall s"),
]


def plot(curves: dict[str, list[tuple[float, float]]], path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for codec, points in curves.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, [100 * y for y in ys], "o-", label=codec)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("cumulative uplink MB (all clients, log scale)")
    ax.set_ylabel("test accuracy % (per-round subset)")
    ax.set_title("LoRA-FedAvg, SmolLM2-135M / SST-2: accuracy vs uplink")
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
