"""LoRA-FedAvg (FedIT / LoRA-FT): clients train a LoRA adapter, the server averages changes."""

from fedpress.methods.lora_fedavg import client, server
from fedpress.registry import Method, register
from fedpress.task import build_task

# What a LoRA method on the federation honours beyond the shared keys.
LORA_FEDERATED_KEYS = (
    "lora",
    "uplink_codec",
    "downlink_codec",
    "codec",
    "federation",
    "privacy",
)

METHOD = register(
    Method(
        name="lora-fedavg",
        about="clients train LoRA; the server averages their changes (FedIT)",
        reads=LORA_FEDERATED_KEYS,
        server=server.build_server,
        client_task=build_task,
        client=client.handlers(),
    )
)
