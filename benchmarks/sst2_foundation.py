"""Foundation benchmark: SmolLM2-135M on SST-2, centralized vs LoRA-FedAvg.

8 clients, Dirichlet(0.5) over labels, every client every round. Both methods see the same
number of training examples (centralized trains clients x local_steps steps per round on the
pooled data). Accuracy is on the 872-example labelled test split (GLUE dev), comparing the
log-probabilities of " positive" and " negative" after the prompt.

    python benchmarks/sst2_foundation.py [--rounds 3] [--local-steps 10]
"""

from __future__ import annotations

import argparse
import time

from common import MB, RESULTS, make_config, markdown_table, quiet, run, save, sst2_setting


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-train", type=int, default=4000)
    args = parser.parse_args()
    quiet()
    base = {
        **sst2_setting(args.clients, args.rounds, args.local_steps, args.max_train),
        "train.lr": args.lr,
        "eval.per_round_examples": 200,
    }
    rows = []
    untuned = None
    for method in ("centralized", "lora-fedavg"):
        config = make_config({**base, "method": method})
        out = RESULTS / "runs" / f"sst2-{method}"
        started = time.perf_counter()
        summary = run(config, out)
        if untuned is None:
            untuned = _untuned_accuracy(config)
        rows.append(
            {
                "method": method,
                "accuracy_%": f"{100 * summary['final_accuracy']:.2f}",
                "eval_loss": f"{summary['final_eval_loss']:.4f}",
                "MB_up": f"{summary['bytes_up_total'] / MB:.2f}",
                "MB_down": f"{summary['bytes_down_total'] / MB:.2f}",
                "wall_s": f"{time.perf_counter() - started:.0f}",
                "orchestration_%": f"{100 * summary['orchestration_share']:.1f}",
                "examples_seen": args.rounds * args.clients * args.local_steps * 8,
                "client_peak_mem_MB": f"{summary['client_peak_mem_bytes'] / MB:.0f}",
            }
        )
    columns = [
        ("method", "method"),
        ("accuracy_%", "test acc %"),
        ("eval_loss", "eval loss"),
        ("MB_up", "MB up"),
        ("MB_down", "MB down"),
        ("wall_s", "wall s"),
        ("orchestration_%", "orchestration % of wall"),
        ("examples_seen", "train examples"),
        ("client_peak_mem_MB", "client peak MB"),
    ]
    table = markdown_table(rows, columns)
    table += f"\n\nUntuned SmolLM2-135M on the same 872 examples: {100 * untuned:.2f} % accuracy."
    print(table)
    save("sst2_foundation", {"args": vars(args), "rows": rows, "untuned_accuracy": untuned}, table)


def _untuned_accuracy(config) -> float:  # noqa: ANN001
    """The base model with the zero-initialised adapter (B = 0) on the full test split."""
    from fedpress.task import build_task

    task = build_task(config)
    task.set_adapter(task.initial_adapter)
    return task.evaluate(task.encode_all(task.splits.eval_examples)).accuracy


if __name__ == "__main__":
    main()
