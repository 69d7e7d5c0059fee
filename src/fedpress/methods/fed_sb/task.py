"""Fed-SB's task: the LoRA task with a trained r x r R between every adapter's frozen A and B.

PEFT computes `lora_B(lora_A(x)) * scaling`; here `lora_A` becomes `AThenR` (A, then R), so
the adapter is `B R A * scaling` and the task's trainable tensors ("adapter") are the R's.
Every process builds the same placeholder (PEFT's seeded A, B = 0, R = identity) and then
installs the A and B of the run's one-off phase (`install_frozen`).
"""

from __future__ import annotations

import torch
from torch import nn

from fedpress.config import RunConfig
from fedpress.models import adapter_state
from fedpress.task import BUILD_LOCK, LoraTask, build_task

ADAPTER = "default"
ADAPTER_R = f"lora_A.{ADAPTER}.r.weight"  # an R's name under its layer's


class AThenR(nn.Module):
    """`R A` where PEFT expects `lora_A`: the frozen A (in -> r), then the trained R (r -> r)."""

    def __init__(self, a: nn.Linear, rank: int) -> None:
        super().__init__()
        self.a = a
        self.r = nn.Linear(rank, rank, bias=False, device=a.weight.device, dtype=a.weight.dtype)
        with torch.no_grad():
            self.r.weight.copy_(torch.eye(rank))

    @property
    def weight(self) -> torch.Tensor:  # PEFT casts its input to `lora_A.weight.dtype`
        return self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.r(self.a(x))


def sb_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The adapted modules by name: PEFT LoRA layers."""
    return {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and ADAPTER in getattr(module, "lora_A", {})
    }


def build_sb_task(config: RunConfig) -> LoraTask:
    """The process's LoRA task, turned into LoRA-SB once (A and B frozen, R trainable). Under
    the build lock: a node's warm-up thread builds it while its first message is handled."""
    with BUILD_LOCK:
        task = build_task(config)
        layers = sb_layers(task.model)
        if not layers:
            raise ValueError("fed-sb found no LoRA layers in the model (lora.target_modules)")
        if not isinstance(next(iter(layers.values())).lora_A[ADAPTER], AThenR):
            to_lora_sb(task.model, config.lora.r)
            task.initial_adapter = adapter_state(task.model)
        return task


def to_lora_sb(model: nn.Module, rank: int) -> None:
    """Put an R after every adapter's A, and train only the R's (`fedpress plan` does this to
    the model on the meta device)."""
    for layer in sb_layers(model).values():
        layer.lora_A[ADAPTER] = AThenR(layer.lora_A[ADAPTER], rank)
    freeze_a_and_b(model)


def freeze_a_and_b(model: nn.Module) -> None:
    """Only the R's train. (PEFT makes an adapter's every tensor trainable again whenever it
    re-enables the adapter, as after `disable_adapter()`: call this after such a block.)"""
    for layer in sb_layers(model).values():
        layer.lora_A[ADAPTER].a.weight.requires_grad_(False)
        layer.lora_A[ADAPTER].r.weight.requires_grad_(True)
        layer.lora_B[ADAPTER].weight.requires_grad_(False)


def frozen_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of the frozen tensors, `<layer>.A` (r x in) and `<layer>.B` (out x r)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, layer in sb_layers(model).items():
        shapes[f"{name}.A"] = tuple(layer.lora_A[ADAPTER].a.weight.shape)
        shapes[f"{name}.B"] = tuple(layer.lora_B[ADAPTER].weight.shape)
    return shapes


def install_frozen(task: LoraTask, frozen: dict[str, torch.Tensor]) -> None:
    """Put the run's A and B into the model (every process installs the same decoded ones)."""
    layers = sb_layers(task.model)
    expected = frozen_shapes(task.model)
    if set(frozen) != set(expected):
        raise ValueError("the frozen A and B do not match this model's LoRA layers")
    with torch.no_grad():
        for name, layer in layers.items():
            for key, target in (("A", layer.lora_A[ADAPTER].a), ("B", layer.lora_B[ADAPTER])):
                value = frozen[f"{name}.{key}"]
                if tuple(value.shape) != expected[f"{name}.{key}"]:
                    raise ValueError(f"frozen {name}.{key} has shape {tuple(value.shape)}")
                target.weight.copy_(value.to(target.weight.device, target.weight.dtype))


def scaling(task: LoraTask) -> float:
    layer = next(iter(sb_layers(task.model).values()))
    return float(layer.scaling[ADAPTER])
