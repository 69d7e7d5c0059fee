"""The centralized references' runs: the pooled data through `loop.run_local`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpress.config import RunConfig
from fedpress.memory import training_memory
from fedpress.methods.centralized.loop import clients_per_round, run_local
from fedpress.methods.fed_full.task import build_full_task
from fedpress.methods.fedcybgd.turns import (
    cybgd_task,
    plan_round,
    task_layout,
    train_block,
    turn_seed,
)
from fedpress.task import LoraTask, build_task
from fedpress.training import Encoded, TrainResult

if TYPE_CHECKING:
    from fedpress.plan import MethodPlan, Planner


def _steps_per_round(task: LoraTask):  # noqa: ANN202
    config = task.config
    steps = config.train.local_steps * clients_per_round(config)

    def train_round(server_round: int, data: list[Encoded]) -> tuple[TrainResult, dict]:
        with training_memory(task.device) as memory:
            result = task.train_round(
                data, server_round, steps=steps, seed=config.seed * 1_000_003 + server_round
            )
        return result, memory

    return train_round


def run_centralized(config: RunConfig, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    task = build_task(config)
    return run_local(config, out_dir, resume, task, _steps_per_round(task))


def run_centralized_full(config: RunConfig, out_dir: Path, resume: bool = False) -> dict[str, Any]:
    task = build_full_task(config)
    return run_local(
        config, out_dir, resume, task, _steps_per_round(task), weights_file="model.safetensors"
    )


def run_centralized_cyclic(
    config: RunConfig, out_dir: Path, resume: bool = False
) -> dict[str, Any]:
    task = cybgd_task(config)
    layout = task_layout(task)
    partitions = list(range(config.num_clients))
    turns_per_round = len(plan_round(config.cybgd, layout.trainable, partitions, 1, config.seed))

    def train_round(server_round: int, data: list[Encoded]) -> tuple[TrainResult, dict]:
        results, peak, added = [], 0, 0
        turns = plan_round(config.cybgd, layout.trainable, partitions, server_round, config.seed)
        for turn in turns:
            result, _, memory = train_block(
                task,
                layout,
                layout.blocks[turn.block],
                data,
                turn.number,
                turn_seed(config, turn.number, 0),
            )
            results.append(result)
            peak, added = max(peak, memory["peak"]), max(added, memory["bytes"])
        merged = TrainResult(
            mean_loss=sum(r.mean_loss for r in results) / len(results),
            steps=sum(r.steps for r in results),
            examples_seen=sum(r.examples_seen for r in results),
            seconds=sum(r.seconds for r in results),
        )
        return merged, {"peak": peak, "bytes": added}

    weights = "adapter.safetensors" if config.cybgd.peft else "model.safetensors"
    steps = config.rounds * turns_per_round * config.train.local_steps
    return run_local(
        config,
        out_dir,
        resume,
        task,
        train_round,
        weights_file=weights,
        extra=lambda: {"client_steps_total": steps},
    )


def plan(planner: Planner) -> MethodPlan:
    """`fedpress plan` of a reference: no messages; the process trains the LoRA task, the
    whole model, or (cyclic) the lowest trainable block, beside the seeded initial state."""
    from fedpress.methods.fedcybgd.plan import block_memory, model_and_blocks
    from fedpress.plan import MethodPlan

    config = planner.config
    if config.method == "centralized-cyclic":
        model, layout = model_and_blocks(planner)
        return MethodPlan({}, block_memory(planner, model, layout, 0, 0))
    model = planner.lora_model() if config.method == "centralized" else planner.base_model()
    initial = 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    return MethodPlan({}, planner.memory(model, held=initial))
