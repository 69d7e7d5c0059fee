"""FFA-LoRA's task: the LoRA task with every `lora_A` frozen at its seeded initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedpress.config import RunConfig
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.models import adapter_state
from fedpress.task import LoraTask, build_task

if TYPE_CHECKING:
    from fedpress.plan import MethodPlan, Planner


def build_ffa_task(config: RunConfig) -> LoraTask:
    """The LoRA task with every `lora_A` frozen: its adapter state is the B matrices."""
    task = build_task(config)
    frozen = [p for n, p in task.model.named_parameters() if "lora_A" in n and p.requires_grad]
    if frozen:
        for param in frozen:
            param.requires_grad_(False)
        task.initial_adapter = adapter_state(task.model)
    return task


def build_server(config: RunConfig, out_dir: Path) -> LoraFedAvgServer:
    return LoraFedAvgServer(config, build_ffa_task(config), out_dir)


def plan(planner: Planner) -> MethodPlan:
    """`fedpress plan`: LoRA-FedAvg's plan on the LoRA task with A frozen, whose state (the B
    matrices) starts all zero."""
    from fedpress.methods.lora_fedavg.plan import plan_lora_shaped, trainable

    model = planner.lora_model()
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)
    return plan_lora_shaped(planner, model, {name: 0.0 for name in trainable(model)})
