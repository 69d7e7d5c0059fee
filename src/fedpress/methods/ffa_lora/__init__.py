"""FFA-LoRA (Sun et al., ICLR 2024): LoRA with A frozen at its seeded random initialisation;
only B is trained, sent and averaged.

With A shared and fixed, the mean of the clients' B changes is exactly the change the mean of
their full LoRA products would make (B A is linear in B), so aggregation is exact, and the
uplink carries only the B numbers: half where every projection is square, 0.40 of
LoRA-FedAvg's bytes on SmolLM2's q/k/v/o (docs/compare_ffa_lora_sst2.md). Server and client
are LoRA-FedAvg's, on a task whose trainable "adapter" is the B matrices; every process
builds the same A from the seed.
"""

from fedpress.methods.lora_fedavg import LORA_CLIENT, LORA_FEDERATED_KEYS
from fedpress.registry import Lazy, Method, register

METHOD = register(
    Method(
        name="ffa-lora",
        about="LoRA with A frozen at its random init; only B trained and sent (FFA-LoRA)",
        reads=LORA_FEDERATED_KEYS,
        server=Lazy("fedpress.methods.ffa_lora.task:build_server"),
        client_task=Lazy("fedpress.methods.ffa_lora.task:build_ffa_task"),
        client=LORA_CLIENT,
        plan=Lazy("fedpress.methods.ffa_lora.task:plan"),
        quantized_base=True,
    )
)
