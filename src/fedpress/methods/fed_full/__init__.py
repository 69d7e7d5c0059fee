"""Fed-full: full-parameter FedAvg, the baseline FedCyBGD is judged against (small models).

Every sampled client receives the whole model, trains every parameter for
`train.local_steps` steps and sends back the change of every parameter; the server averages
the changes. The server is LoRA-FedAvg's with the full model as the "adapter"
(`fed_full.task`), and so is the client, so sampling, validation, codecs, DP, checkpoints and
accounting are shared.
"""

from fedpress.methods.lora_fedavg import LORA_CLIENT, LORA_FEDERATED_KEYS
from fedpress.registry import Lazy, Method, register

METHOD = register(
    Method(
        name="fed-full",
        about="full-parameter FedAvg: every client trains and sends the whole model",
        # LoRA-FedAvg's keys but [lora]: the "adapter" is the whole model.
        reads=tuple(key for key in LORA_FEDERATED_KEYS if key != "lora"),
        server=Lazy("fedpress.methods.fed_full.task:build_server"),
        client_task=Lazy("fedpress.methods.fed_full.task:build_full_task"),
        client=LORA_CLIENT,
        plan=Lazy("fedpress.methods.fed_full.task:plan"),
    )
)
