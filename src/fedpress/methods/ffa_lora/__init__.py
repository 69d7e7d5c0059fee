"""FFA-LoRA (Sun et al., ICLR 2024): LoRA with A frozen at its seeded random initialisation;
only B is trained, sent and averaged.

With A shared and fixed, the mean of the clients' B changes is exactly the change the mean of
their full LoRA products would make (B A is linear in B), so aggregation is exact, and the
uplink carries only the B numbers: half where every projection is square, 0.40 of
LoRA-FedAvg's bytes on SmolLM2's q/k/v/o (docs/compare_ffa_lora_sst2.md). Server and client
are LoRA-FedAvg's, on a task whose trainable "adapter" is the B matrices; every process
builds the same A from the seed.
"""

from __future__ import annotations

from pathlib import Path

from fedpress.config import RunConfig
from fedpress.methods.lora_fedavg import LORA_FEDERATED_KEYS, client
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.models import adapter_state
from fedpress.registry import Method, register
from fedpress.task import LoraTask, build_task


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


METHOD = register(
    Method(
        name="ffa-lora",
        about="LoRA with A frozen at its random init; only B trained and sent (FFA-LoRA)",
        reads=LORA_FEDERATED_KEYS,
        server=build_server,
        client_task=build_ffa_task,
        client=client.handlers(build_ffa_task),
    )
)
