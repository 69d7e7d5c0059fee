"""Centralised full-parameter references on the pooled client data.

- `centralized-full`: every parameter trained, `train.local_steps` x clients per round steps
  per round (the centralized LoRA loop with the full model as the "adapter").
- `centralized-cyclic`: FedCyBGD's block cycle without the federation: the same turns
  (`plan_round`, same count and block order), each `train.local_steps` steps on the pooled
  data, the same per-turn block training (`train_block`), so it isolates what federating the
  cycle costs.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from fedpress.checkpoint import save_checkpoint
from fedpress.config import RunConfig
from fedpress.full_task import build_full_task
from fedpress.methods.centralized import run_centralized, start_or_resume
from fedpress.methods.fedcybgd import (
    cybgd_task,
    plan_round,
    task_layout,
    train_block,
    turn_seed,
    turns_per_round,
)
from fedpress.reporting import RoundRecord


def run_centralized_full(config: RunConfig, out_dir: Path, resume: bool = False) -> dict:
    return run_centralized(
        config, out_dir, resume, build_full_task(config), weights_file="model.safetensors"
    )


def run_centralized_cyclic(config: RunConfig, out_dir: Path, resume: bool = False) -> dict:
    task = cybgd_task(config)
    layout = task_layout(task)
    train_data = task.encode_all(task.splits.pooled_train)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    recorder, first_round = start_or_resume(config, task, out_dir, resume, eval_subset)
    partitions = list(range(config.num_clients))
    for server_round in tqdm(
        range(first_round, config.rounds + 1), desc="centralized-cyclic rounds", unit="round"
    ):
        started = time.perf_counter()
        losses, train_s, peak = [], 0.0, 0
        turns = plan_round(config.cybgd, layout.trainable, partitions, server_round, config.seed)
        for turn in tqdm(turns, desc="turns", unit="turn", leave=False):
            result, delta, turn_peak = train_block(
                task,
                layout,
                layout.blocks[turn.block],
                train_data,
                turn.number,
                turn_seed(config, turn.number, 0),
            )
            losses.append(result.mean_loss)
            train_s += result.seconds
            peak = max(peak, turn_peak)
        evaluation = task.evaluate(eval_subset)
        wall = time.perf_counter() - started
        recorder.log_round(
            RoundRecord(
                round=server_round,
                train_loss=sum(losses) / len(losses),
                eval_loss=evaluation.loss,
                accuracy=evaluation.accuracy,
                eval_examples=evaluation.examples,
                client_peak_mem_bytes=peak,
                client_train_s=train_s,
                eval_s=evaluation.seconds,
                round_wall_s=wall,
                orchestration_s=max(0.0, wall - train_s - evaluation.seconds),
            )
        )
        save_checkpoint(
            out_dir, _state(task), {"round": server_round, "elapsed_s": recorder.elapsed()}
        )
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    weights = "adapter.safetensors" if config.cybgd.peft else "model.safetensors"
    # From the plan, not the loop's last `turns`: a run resumed after its last round trains none.
    per_round = turns_per_round(config.cybgd, len(layout.trainable), len(partitions))
    steps = config.rounds * per_round * config.train.local_steps
    return recorder.finish(
        _state(task),
        final.loss,
        final.accuracy,
        final.examples,
        extra={"client_steps_total": steps},
        weights_file=weights,
    )


def _state(task) -> dict:  # noqa: ANN001
    """Every synced tensor (train_block leaves all parameters frozen, so not task.adapter())."""
    import torch

    params = dict(task.model.named_parameters())
    return {n: params[n].detach().to("cpu", torch.float32).clone() for n in task.initial_adapter}
