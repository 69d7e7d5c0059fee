"""Centralized LoRA fine-tuning on the pooled client data: the upper reference.

It sees as many training examples per round as the federation does (sampled clients x local
steps x batch size), so curves compare round by round.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from fedpress.checkpoint import load_checkpoint, save_checkpoint
from fedpress.config import RunConfig
from fedpress.memory import training_memory
from fedpress.reporting import RoundRecord, RunRecorder
from fedpress.task import LoraTask, build_task
from fedpress.training import Encoded


def clients_per_round(config: RunConfig) -> int:
    return max(1, round(config.num_clients * config.federation.fraction_train))


def run_centralized(
    config: RunConfig,
    out_dir: Path,
    resume: bool = False,
    task: LoraTask | None = None,
    weights_file: str = "adapter.safetensors",
) -> dict:
    """`task` replaces the LoRA task (centralized-full passes the full model)."""
    task = task or build_task(config)
    train_data = task.encode_all(task.splits.pooled_train)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    steps = config.train.local_steps * clients_per_round(config)
    recorder, first_round = start_or_resume(config, task, out_dir, resume, eval_subset)
    rounds = range(first_round, config.rounds + 1)
    for server_round in tqdm(rounds, desc="centralized rounds", unit="round"):
        started = time.perf_counter()
        # Seeds depend on the round only, and the optimizer is fresh each round, so a resumed
        # run continues exactly as an uninterrupted one.
        # What training adds above the loaded model, like the federated clients' figure; the
        # process's lifetime RSS would include whatever ran before in this process (a compare).
        with training_memory(task.device) as memory:
            result = task.train_round(
                train_data, server_round, steps=steps, seed=config.seed * 1_000_003 + server_round
            )
        evaluation = task.evaluate(eval_subset)
        wall = time.perf_counter() - started
        recorder.log_round(
            RoundRecord(
                round=server_round,
                train_loss=result.mean_loss,
                eval_loss=evaluation.loss,
                accuracy=evaluation.accuracy,
                eval_examples=evaluation.examples,
                client_peak_mem_bytes=memory["bytes"],
                client_train_s=result.seconds,
                eval_s=evaluation.seconds,
                round_wall_s=wall,
                orchestration_s=max(0.0, wall - result.seconds - evaluation.seconds),
            )
        )
        save_checkpoint(
            out_dir, task.adapter(), {"round": server_round, "elapsed_s": recorder.elapsed()}
        )
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    return recorder.finish(
        task.adapter(), final.loss, final.accuracy, final.examples, weights_file=weights_file
    )


def start_or_resume(
    config: RunConfig,
    task: LoraTask,
    out_dir: Path,
    resume: bool,
    eval_subset: list[Encoded],
) -> tuple[RunRecorder, int]:
    """The recorder and the first round to train: after the last checkpoint when resuming,
    otherwise from the initial weights, with round 0's evaluation logged."""
    checkpoint = load_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        tensors, state = checkpoint
        task.set_adapter(tensors)
        return RunRecorder(out_dir, config, state["round"], state["elapsed_s"]), state["round"] + 1
    recorder = RunRecorder(out_dir, config)
    task.set_adapter(task.initial_adapter)
    first = task.evaluate(eval_subset)
    recorder.log_round(
        RoundRecord(0, None, first.loss, first.accuracy, first.examples, eval_s=first.seconds)
    )
    return recorder, 1
