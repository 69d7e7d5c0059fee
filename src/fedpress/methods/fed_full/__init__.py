"""Fed-full: full-parameter FedAvg, the baseline FedCyBGD is judged against (small models).

Every sampled client receives the whole model, trains every parameter for
`train.local_steps` steps and sends back the change of every parameter; the server averages
the changes. The server is LoRA-FedAvg's with the full model as the "adapter"
(`fed_full.task`), and so is the client, so sampling, validation, codecs, DP, checkpoints and
accounting are shared.
"""

from __future__ import annotations

from pathlib import Path

from fedpress.config import RunConfig
from fedpress.methods.fed_full.task import build_full_task
from fedpress.methods.lora_fedavg import client
from fedpress.methods.lora_fedavg.server import LoraFedAvgServer
from fedpress.registry import Method, register


def build_server(config: RunConfig, out_dir: Path) -> LoraFedAvgServer:
    server = LoraFedAvgServer(config, build_full_task(config), out_dir)
    server.weights_file = "model.safetensors"
    return server


METHOD = register(
    Method(
        name="fed-full",
        about="full-parameter FedAvg: every client trains and sends the whole model",
        reads=("uplink_codec", "downlink_codec", "codec", "federation", "privacy"),
        server=build_server,
        client_task=build_full_task,
        client=client.handlers(build_full_task),
    )
)
