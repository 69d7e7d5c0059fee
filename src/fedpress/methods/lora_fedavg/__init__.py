"""LoRA-FedAvg (FedIT / LoRA-FT): clients train a LoRA adapter, the server averages changes."""

from fedpress.registry import EVALUATE, Lazy, Method, register

# What a LoRA method on the federation honours beyond the shared keys.
LORA_FEDERATED_KEYS = (
    "lora",
    "uplink_codec",
    "downlink_codec",
    "codec",
    "federation",
    "privacy",
    "server_optimizer",
    "aggregation",
)

# The client turns of every LoRA-FedAvg-shaped method, on the task that method builds.
LORA_CLIENT = {
    "": Lazy("fedpress.methods.lora_fedavg.client:train"),
    EVALUATE: Lazy("fedpress.methods.lora_fedavg.client:evaluate"),
}

METHOD = register(
    Method(
        name="lora-fedavg",
        about="clients train LoRA; the server averages their changes (FedIT)",
        reads=LORA_FEDERATED_KEYS,
        server=Lazy("fedpress.methods.lora_fedavg.server:build_server"),
        client_task=Lazy("fedpress.task:build_task"),
        client=LORA_CLIENT,
        reference=True,
        quantized_base=True,
        plan=Lazy("fedpress.methods.lora_fedavg.plan:plan"),
    )
)
