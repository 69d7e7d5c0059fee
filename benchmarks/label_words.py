"""Where a classification run's eval loss goes: saying a label word at all, or the right one.

On SST-2 the eval loss is the cross-entropy of the answer token over the whole vocabulary,
while accuracy only ranks the two label words. The loss splits exactly into two parts:

    -log p(answer) = -log p(label words)  +  -log p(answer | label words)
       eval loss   =   "not a label word"  +  "the wrong label" (2-way loss)

so a run can win most of the loss by learning to answer with a label word (the format) and
still not tell the labels apart better. This reads finished runs' adapters back, scores the
run's own final eval set, and prints both parts beside the accuracy, with the untuned model of
the first run's seed.

    python benchmarks/label_words.py runs/converged_sst2/seed-0/lora-fedavg \
        runs/converged_sst2/seed-0/topk-fp16-1in100
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from common import markdown_table, quiet, save
from fedpress.config import load_config
from fedpress.models import load_adapter_state
from fedpress.task import build_task
from fedpress.training import answer_logits, collate, first_answer_positions

RESULT_NAME = "label_words"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished LoRA run folders")
    parser.add_argument("--name", default=RESULT_NAME, help="results file name")
    args = parser.parse_args()
    quiet()
    rows = []
    untuned_done: set[int] = set()
    for run in args.runs:
        config = load_config(run / "config.toml")
        task = build_task(config)
        encoded = task.encode_all(task.splits.eval_examples)
        if config.seed not in untuned_done:  # the seeded round-0 adapter (B = 0): the base model
            load_adapter_state(task.model, task.initial_adapter)
            rows.append({"run": f"untuned (seed {config.seed})", **split_loss(task, encoded)})
            untuned_done.add(config.seed)
        load_adapter_state(task.model, load_file(str(run / "adapter.safetensors")))
        rows.append({"run": f"{run.name} (seed {config.seed})", **split_loss(task, encoded)})
        print(rows[-1], flush=True)
    columns = [
        ("run", "run"),
        ("examples", "eval sentences"),
        ("eval_loss", "eval loss"),
        ("not_label", "of it: not a label word, -log p(labels)"),
        ("wrong_label", "of it: the wrong label, 2-way loss"),
        ("label_mass", "mean p(label words)"),
        ("accuracy", "accuracy %"),
    ]
    shown = [
        {
            **r,
            **{k: f"{r[k]:.4f}" for k in ("eval_loss", "not_label", "wrong_label", "label_mass")},
            "accuracy": f"{100 * r['accuracy']:.2f}",
        }
        for r in rows
    ]
    command = "python benchmarks/label_words.py " + " ".join(str(r) for r in args.runs)
    table = f"`{command}`\n\n" + markdown_table(shown, columns)
    print(table)
    save(args.name, {"command": command, "rows": rows}, table)


@torch.no_grad()
def split_loss(task: Any, encoded: list) -> dict[str, float]:
    """Mean over examples of both parts of the first answer token's loss, and accuracy."""
    model = task.model.eval()
    device = next(model.parameters()).device
    not_label = wrong_label = mass = 0.0
    correct = count = 0
    size = task.config.eval.batch_size
    for begin in range(0, len(encoded), size):
        batch = encoded[begin : begin + size]
        if any(len(c) != 1 for e in batch for c in e.choice_ids) or any(
            e.answer_index < 0 for e in batch
        ):
            raise SystemExit("label_words.py needs single-token choices (SST-2, MMLU letters)")
        logits, _, rows = answer_logits(model, collate(batch, task.pad_id, device))
        first = first_answer_positions(rows)
        logprobs = logits.log_softmax(-1)
        for row, e in enumerate(batch):
            choice_logprobs = logprobs[first[row], [c[0] for c in e.choice_ids]]
            label_logmass = torch.logsumexp(choice_logprobs, 0).item()
            not_label -= label_logmass
            wrong_label -= choice_logprobs[e.answer_index].item() - label_logmass
            mass += math.exp(label_logmass)
            correct += int(choice_logprobs.argmax().item() == e.answer_index)
            count += 1
    return {
        "examples": count,
        "eval_loss": (not_label + wrong_label) / count,
        "not_label": not_label / count,
        "wrong_label": wrong_label / count,
        "label_mass": mass / count,
        "accuracy": correct / count,
    }


if __name__ == "__main__":
    main()
