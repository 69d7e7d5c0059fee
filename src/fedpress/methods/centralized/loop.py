"""The one local loop of the centralized references: the pooled client data in one process.

It sees as many training examples per round as the federation does (sampled clients x local
steps x batch size), so curves compare round by round; it records, checkpoints and resumes
like the federation loop, and writes the same files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fedpress.checkpoint import load_checkpoint, save_checkpoint
from fedpress.config import RunConfig
from fedpress.run_files import RoundRecord, RunRecorder
from fedpress.task import LoraTask
from fedpress.training import Encoded, TrainResult

# (round, pooled data) -> (result, memory {"peak", "bytes"}) of one round's training.
TrainRound = Callable[[int, list[Encoded]], tuple[TrainResult, dict[str, int]]]


def clients_per_round(config: RunConfig) -> int:
    return max(1, round(config.num_clients * config.federation.fraction_train))


def synced_state(task: LoraTask) -> dict[str, torch.Tensor]:
    """Every tensor the method changes (block training leaves all parameters frozen between
    turns, so `task.adapter()` would be empty)."""
    params = dict(task.model.named_parameters())
    return {n: params[n].detach().to("cpu", torch.float32).clone() for n in task.initial_adapter}


def run_local(
    config: RunConfig,
    out_dir: Path,
    resume: bool,
    task: LoraTask,
    train_round: TrainRound,
    weights_file: str = "adapter.safetensors",
    extra: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    torch.set_num_threads(max(1, config.runtime.threads or torch.get_num_threads()))
    train_data = task.encode_all(task.splits.pooled_train)
    eval_subset = task.encode_all(task.splits.eval_examples[: config.eval.per_round_examples])
    checkpoint = load_checkpoint(out_dir, reference=task.initial_adapter) if resume else None
    if checkpoint is not None:
        tensors, state = checkpoint
        task.set_adapter(tensors)
        recorder = RunRecorder(out_dir, config, state["round"], state["elapsed_s"])
        first_round = state["round"] + 1
    else:
        recorder = RunRecorder(out_dir, config)
        task.set_adapter(task.initial_adapter)
        first = task.evaluate(eval_subset)
        recorder.log_round(
            RoundRecord(0, None, first.loss, first.accuracy, first.examples, eval_s=first.seconds)
        )
        first_round = 1
    rounds = range(first_round, config.rounds + 1)
    for server_round in tqdm(rounds, desc=f"{config.method} rounds", unit="round"):
        started = time.perf_counter()
        # Seeds depend on the round only, and the optimizer is fresh each round, so a resumed
        # run continues exactly as an uninterrupted one.
        result, memory = train_round(server_round, train_data)
        evaluation = task.evaluate(eval_subset)
        wall = time.perf_counter() - started
        recorder.log_round(
            RoundRecord(
                round=server_round,
                train_loss=result.mean_loss,
                eval_loss=evaluation.loss,
                accuracy=evaluation.accuracy,
                eval_examples=evaluation.examples,
                client_peak_mem_bytes=memory["peak"],
                client_train_mem_bytes=memory["bytes"],
                client_train_s=result.seconds,
                eval_s=evaluation.seconds,
                round_wall_s=wall,
                orchestration_s=max(0.0, wall - result.seconds - evaluation.seconds),
            )
        )
        save_checkpoint(
            out_dir, synced_state(task), {"round": server_round, "elapsed_s": recorder.elapsed()}
        )
    final = task.evaluate(task.encode_all(task.splits.eval_examples))
    return recorder.finish(
        synced_state(task),
        final.loss,
        final.accuracy,
        final.examples,
        {**(extra() if extra else {}), "final_eval_s": final.seconds},
        weights_file=weights_file,
    )
