"""The full-parameter task: the base model with every parameter trainable, no adapter.

It is a `LoraTask` whose "adapter" is the whole model (`adapter()` returns every trainable
parameter), so the LoRA recipes' pieces (FedAvg strategy, centralized loop, client helpers)
run full-parameter tuning unchanged. FedCyBGD narrows what is trainable turn by turn. Like
`build_task`, each process keeps the last one it built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedpress.config import RunConfig
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.models import adapter_state, load_base_model, load_tokenizer, resolve_placement
from fedpress.task import BUILD_LOCK, LoraTask

if TYPE_CHECKING:
    from fedpress.plan import MethodPlan, Planner

_CACHE: dict[str, LoraTask] = {}


def build_full_task(config: RunConfig) -> LoraTask:
    with BUILD_LOCK:
        return _build_full_task(config)


def _build_full_task(config: RunConfig) -> LoraTask:
    key = config.to_json()
    if key not in _CACHE:
        _CACHE.clear()  # one model per process
        placement = resolve_placement(config.runtime)
        tokenizer = load_tokenizer(config.model)
        model = load_base_model(config.model, config.runtime)
        model.config.use_cache = False  # training and scoring never decode step by step
        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        for param in model.parameters():
            param.requires_grad_(True)
        model.eval()
        _CACHE[key] = LoraTask(config, model, tokenizer, placement.device, adapter_state(model))
    return _CACHE[key]


def build_server(config: RunConfig, out_dir: Path) -> LoraFedAvgServer:
    server = LoraFedAvgServer(config, build_full_task(config), out_dir)
    server.weights_file = "model.safetensors"
    return server


def plan(planner: Planner) -> MethodPlan:
    """`fedpress plan`: LoRA-FedAvg's plan with the whole model as the state."""
    from fedpress.methods.lora_fedavg.plan import plan_lora_shaped

    return plan_lora_shaped(planner, planner.base_model(), {})
