"""Where a run's time goes (issue 16): fedpress against references run in the same invocation.

    python benchmarks/speed.py                 # everything but the test suite (~15 min, 2 cores)
    python benchmarks/speed.py --skip-demo     # without the no-argument demo
    python benchmarks/speed.py --tests         # also time the quick tier and the whole suite
    python benchmarks/speed.py --steps-only    # the per-step rows alone (~5 min)

Prints and saves `benchmarks/results/speed.{json,md}` (with `--steps-only`: speed_steps.*):

- per-step training time of a fedpress client (`fedpress run`, 1 client, 1 round of `--steps`
  steps, SmolLM2-135M, LoRA r=8 on q/k/v/o, SST-2, batch 8) against a plain PyTorch + PEFT
  loop written here and against trl's SFTTrainer over PEFT (how FlowerTune's LLM example and
  OpenFedLLM train a client), on the same model, the same tokenised batches and the same
  thread count, with each one's mean training loss over those steps;
- the fixed cost of a run (wall time minus client training, codec and evaluation time) against
  Flower's own simulation of a trivial app (the server sends each client an empty message per
  round, the client echoes it) with the same numbers of clients and rounds, for SmolLM2 and for
  tiny-llama (2 clients, 2 rounds);
- the wall time of the tiny-llama 2 x 2 run (and its final eval loss, which must not move
  with speed work), and of the demo (`fedpress run`, no arguments, in a new process, the
  SmolLM2 cache already built) with its final accuracy against round 0's;
- parallel clients on this machine's cores: 2 SmolLM2 clients x 1 thread each (training at the
  same time) against 1 client x 2 threads (one after the other), same steps; the time of
  round 2 (no model loads in it) is compared;
- with `--tests`: the wall time of `pytest -m "not slow"` and of the whole suite (`pytest`),
  each on scripts/test.sh's two xdist workers.

Ratios compare figures taken in this one invocation, on this machine, under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import REPO, RESULTS, make_config, markdown_table, quiet, save, sst2_setting


def client_setup(steps: int, threads: int) -> tuple[Any, Any, Any, list[Any], float]:
    """SmolLM2 with LoRA r=8 and the tokenised SST-2 share a fedpress client trains on, and
    the seconds that took."""
    from fedpress.data import build_splits
    from fedpress.models import add_lora, load_base_model, load_tokenizer
    from fedpress.training import encode

    config = make_config({**sst2_setting(1, 1, steps, 2000), "lora.r": 8})
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = add_lora(load_base_model(config.model, config.runtime), config.lora)
    tokenizer = load_tokenizer(config.model)
    splits = build_splits(config.data, 1, config.seed)
    data = [encode(e, tokenizer, config.data.max_length) for e in splits.client_shares[0]]
    return config, model, tokenizer, data, time.perf_counter() - started


def client_batches(config: Any, examples: int, steps: int) -> list[list[int]]:
    """The batches the fedpress client draws in round 1 as partition 0."""
    from fedpress.flower.node import train_seed
    from fedpress.training import batch_rows

    return list(batch_rows(examples, config.train.batch_size, steps, train_seed(config, 1, 0)))


def plain_peft_loop(steps: int, threads: int) -> dict[str, float]:
    """The reference: model + PEFT LoRA, AdamW, the same batches fedpress's client trains on
    (its seeded order, `training.batch_rows`)."""
    from fedpress.training import collate

    config, model, tokenizer, data, load_s = client_setup(steps, threads)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    model.train()
    start = time.perf_counter()
    losses = []
    for rows in client_batches(config, len(data), steps):
        batch_data = [data[i] for i in rows]
        loss = model(**collate(batch_data, int(tokenizer.pad_token_id), torch.device("cpu"))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    train_s = time.perf_counter() - start
    return {
        "train_s": train_s,
        "step_s": train_s / steps,
        "load_s": load_s,
        "mean_train_loss": sum(losses) / len(losses),
        "first_train_loss": losses[0],
    }


def trl_sft_peer(steps: int, threads: int) -> dict[str, float]:
    """What FlowerTune's LLM example and OpenFedLLM run in each client: trl's SFTTrainer over
    a PEFT LoRA model. The same model, the same batches in the same order (sequential sampling
    over them), the same loss on answer tokens (prebuilt labels), AdamW at a constant rate,
    the same gradient clipping. Its round: building the trainer, then `train()`."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    config, model, tokenizer, data, load_s = client_setup(steps, threads)
    order = [data[i] for rows in client_batches(config, len(data), steps) for i in rows]
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in order])

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.began, self.seconds, self.losses = 0.0, [], []

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003, ANN201
            self.seconds.append(time.perf_counter() - self.began)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    clock = StepClock()
    round_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,
            max_steps=steps,
            per_device_train_batch_size=config.train.batch_size,
            learning_rate=config.train.lr,
            lr_scheduler_type="constant",
            weight_decay=config.train.weight_decay,
            # trl's defaults are bf16 autocast and gradient checkpointing; fedpress's client (and
            # the plain loop) train in fp32 without checkpointing: like for like.
            bf16=False,
            gradient_checkpointing=False,
            max_grad_norm=config.train.max_grad_norm,
            max_length=config.data.max_length,
            train_sampling_strategy="sequential",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        trainer.train()
    train_s = sum(clock.seconds)
    return {
        "train_s": train_s,
        "step_s": train_s / steps,
        "round_s": time.perf_counter() - round_start,
        "load_s": load_s,
        "mean_train_loss": sum(clock.losses) / max(len(clock.losses), 1),
        "first_train_loss": clock.losses[0] if clock.losses else float("nan"),
        "steps_run": len(clock.seconds),
    }


def fedpress_run(overrides: dict[str, Any], out: Path) -> dict[str, float]:
    """`fedpress run`'s code path, in this process; the summary's time breakdown."""
    from fedpress.runner import run_config

    config = make_config(overrides)
    started = time.perf_counter()
    summary = run_config(config, out)
    wall = time.perf_counter() - started
    # Evaluation: the per-round evaluations (eval_s) and the final one on the full eval split.
    evaluation = summary["eval_s"] + summary["final_eval_s"]
    measured = summary["client_train_s"] + summary["codec_s"] + evaluation
    return {
        "wall_s": wall,
        "client_train_s": summary["client_train_s"],
        "codec_s": summary["codec_s"],
        "eval_s": evaluation,
        "fixed_s": wall - measured,
        "step_s": summary["client_train_s"] / (config.train.local_steps * config.num_clients),
        "final_accuracy": summary["final_accuracy"],
        "final_eval_loss": summary["final_eval_loss"],
        "train_loss": read_rounds(out)[1]["train_loss"],
    }


def read_rounds(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def parallel_clients(threads: int, steps: int, out: Path) -> dict[str, Any]:
    """Round 2's wall time of 2 SmolLM2 clients trained side by side with `threads // 2`
    threads each, against one at a time with `threads` threads."""
    figures: dict[str, Any] = {}
    for name, client_cpus in (("side_by_side", max(1, threads // 2)), ("one_at_a_time", threads)):
        overrides = {
            **sst2_setting(2, 2, steps, 400),
            "federation.client_cpus": client_cpus,
            "eval.per_round_examples": 16,
            "data.eval_size": 16,
        }
        run_config_summary = fedpress_run(overrides, out / name)
        second = read_rounds(out / name)[2]
        figures[name] = {
            "client_cpus": client_cpus,
            "round2_s": second["round_wall_s"] - second["eval_s"],
            "wall_s": run_config_summary["wall_s"],
        }
    return figures


def time_tests(args: list[str]) -> float:
    """Wall seconds of pytest on as many workers as scripts/test.sh (what CI runs) uses."""
    workers = ["-n", os.environ.get("FEDPRESS_TEST_WORKERS", "2"), "--dist", "worksteal"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pytest", "-q", *workers, *args], check=True, cwd=REPO)
    return time.perf_counter() - started


def trivial_flower(clients: int, rounds: int) -> float:
    """Wall seconds of Flower's simulation of an app that does nothing but exchange messages."""
    from flwr.app import Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    client = ClientApp()

    @client.train()
    def echo(msg: Message, context: Context) -> Message:
        return Message(RecordDict(), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        while len(grid.get_node_ids()) < clients:
            time.sleep(0.1)
        for _ in range(rounds):
            messages = [
                Message(RecordDict(), message_type=MessageType.TRAIN, dst_node_id=node)
                for node in grid.get_node_ids()
            ]
            grid.send_and_receive(messages)

    started = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    return time.perf_counter() - started


def demo(out: Path) -> dict[str, Any]:
    """`fedpress run` with no arguments, in a new process (first model load excluded: the
    SmolLM2 cache is built by the SmolLM2 runs before)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fedpress.cli", "run", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=3600,
    )
    wall = time.perf_counter() - started
    rounds = read_rounds(out)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_s": wall,
        "round0_accuracy": rounds[0]["accuracy"],
        "final_accuracy": summary["final_accuracy"],
    }


def cpu_model() -> str:
    """The processor's name: machines of the same size differ (a SmolLM2 step took 1.85 s on
    one 2-core machine, 1.13 s on another), so a figure says which it was taken on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--tests", action="store_true", help="also time the test tiers")
    parser.add_argument(
        "--steps-only",
        action="store_true",
        help="only the per-step comparison: fedpress's client, the plain loop, trl's SFTTrainer",
    )
    args = parser.parse_args()
    quiet()
    threads = min(2, os.cpu_count() or 1)
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="fedpress-speed-"))
    smol = {
        **sst2_setting(1, 1, args.steps, 2000),
        "federation.client_cpus": threads,
        "eval.per_round_examples": 100,
    }
    results: dict[str, Any] = {
        "cpu": cpu_model(),
        "threads": threads,
        "load_at_start": load,
        "steps": args.steps,
    }
    results["plain"] = plain_peft_loop(args.steps, threads)
    results["trl_sft"] = trl_sft_peer(args.steps, threads)
    results["fedpress_smollm2"] = fedpress_run(smol, work / "smol")
    if args.steps_only:
        return report(args, results, threads, load)
    results["flower_trivial_1x1"] = trivial_flower(1, 1)
    tiny = {
        "model": "tiny-llama",
        "num_clients": 2,
        "rounds": 2,
        "federation.client_cpus": 1,
    }
    results["fedpress_tiny"] = fedpress_run(tiny, work / "tiny")
    results["flower_trivial_2x2"] = trivial_flower(2, 2)
    results["parallel"] = parallel_clients(threads, 8, work / "parallel")
    if not args.skip_demo:
        results["demo"] = demo(work / "demo")
    if args.tests:
        results["tests_quick_s"] = time_tests(["-m", "not slow"])
        results["tests_all_s"] = time_tests([])
    report(args, results, threads, load)


def report(args: argparse.Namespace, results: dict[str, Any], threads: int, load: float) -> None:
    results["load_at_end"] = os.getloadavg()[0]
    plain, smol_run, peer = results["plain"], results["fedpress_smollm2"], results["trl_sft"]
    rows = [
        {
            "figure": "per-step training time, fedpress client / plain PEFT loop",
            "value": f"{smol_run['step_s']:.2f} s / {plain['step_s']:.2f} s = "
            f"{smol_run['step_s'] / plain['step_s']:.3f}x",
            "target": "<= 1.05x",
        },
        {
            "figure": "per-step training time, trl SFTTrainer peer / fedpress client",
            "value": f"{peer['step_s']:.2f} s / {smol_run['step_s']:.2f} s = "
            f"{peer['step_s'] / smol_run['step_s']:.3f}x",
            "target": "(what users would otherwise run)",
        },
        {
            "figure": "one round of training, trl SFTTrainer peer (trainer built + train()) / "
            "fedpress client (client_train_s)",
            "value": f"{peer['round_s']:.1f} s / {smol_run['client_train_s']:.1f} s = "
            f"{peer['round_s'] / smol_run['client_train_s']:.2f}x",
            "target": "",
        },
        {
            "figure": f"mean training loss over the {args.steps} steps: fedpress / plain / trl",
            "value": f"{smol_run['train_loss']:.4f} / {plain['mean_train_loss']:.4f} / "
            f"{peer['mean_train_loss']:.4f}",
            "target": "the same batches: close",
        },
    ]
    if "fedpress_tiny" not in results:
        return finish(args, results, threads, load, rows, ["fedpress_smollm2"])
    tiny_run = results["fedpress_tiny"]
    rows += [
        {
            "figure": "fixed cost, SmolLM2 1 client x 1 round, minus Flower's trivial app",
            "value": f"{smol_run['fixed_s']:.1f} s - {results['flower_trivial_1x1']:.1f} s = "
            f"{smol_run['fixed_s'] - results['flower_trivial_1x1']:.1f} s",
            "target": "<= 15 s",
        },
        {
            "figure": "fixed cost, tiny-llama 2 clients x 2 rounds, minus Flower's trivial app",
            "value": f"{tiny_run['fixed_s']:.1f} s - {results['flower_trivial_2x2']:.1f} s = "
            f"{tiny_run['fixed_s'] - results['flower_trivial_2x2']:.1f} s",
            "target": "<= 15 s",
        },
        {
            "figure": "tiny-llama 2 clients x 2 rounds, wall",
            "value": f"{tiny_run['wall_s']:.1f} s "
            f"(final eval loss {tiny_run['final_eval_loss']:.6f})",
            "target": "<= 25 s",
        },
    ]
    side, serial = results["parallel"]["side_by_side"], results["parallel"]["one_at_a_time"]
    rows.append(
        {
            "figure": "round 2 of 2 SmolLM2 clients: side by side (1 thread each) / one at a "
            "time (2 threads)",
            "value": f"{side['round2_s']:.1f} s / {serial['round2_s']:.1f} s = "
            f"{side['round2_s'] / serial['round2_s']:.2f}x",
            "target": "the faster is the default",
        }
    )
    for key, label, target in (
        ("tests_quick_s", "quick test tier (`pytest -m 'not slow' -n 2`)", "< 180 s"),
        ("tests_all_s", "whole test suite (`pytest -n 2`, as scripts/test.sh)", "< 600 s"),
    ):
        if key in results:
            rows.append({"figure": label, "value": f"{results[key]:.0f} s", "target": target})
    if "demo" in results:
        d = results["demo"]
        rows.append(
            {
                "figure": "demo (`fedpress run`, no arguments), wall",
                "value": f"{d['wall_s']:.0f} s; accuracy {100 * d['round0_accuracy']:.1f} % "
                f"untuned -> {100 * d['final_accuracy']:.1f} %",
                "target": "<= 150 s",
            }
        )
    finish(args, results, threads, load, rows, ["fedpress_smollm2", "fedpress_tiny"])


def finish(
    args: argparse.Namespace,
    results: dict[str, Any],
    threads: int,
    load: float,
    rows: list[dict[str, str]],
    runs: list[str],
) -> None:
    table = markdown_table(
        rows, [("figure", "figure"), ("value", "measured"), ("target", "target")]
    )
    breakdown = markdown_table(
        [
            {"run": name, **{k: f"{v:.1f}" for k, v in results[name].items() if k.endswith("_s")}}
            for name in runs
        ],
        [
            ("run", "run"),
            ("wall_s", "wall s"),
            ("client_train_s", "client train s"),
            ("codec_s", "codec s"),
            ("eval_s", "eval s"),
            ("fixed_s", "fixed s"),
        ],
    )
    flags = "".join(
        f" --{f}"
        for f in ("skip-demo", "tests", "steps-only")
        if getattr(args, f.replace("-", "_"))
    )
    name = "speed_steps" if args.steps_only else "speed"
    header = (
        f"`python benchmarks/speed.py{flags}`, "
        f"{results['cpu']}, {threads} threads, load average {load:.2f} at start and "
        f"{results['load_at_end']:.2f} at the end ({RESULTS.name}/{name}.json has every figure)."
    )
    text = f"{header}\n\n{table}\n\n{breakdown}"
    print(text)
    save(name, results, text)


if __name__ == "__main__":
    main()
