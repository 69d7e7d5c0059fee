"""Fed-SB (Singhal et al., 2025, arXiv 2502.15436): federated LoRA-SB, `W = W0 + B R A`.

A and B are frozen, computed once so that `B R A` is the rank-r truncated SVD of the first
full fine-tuning step (Adam's first step, `-lr sign(gradient)`, at a small `fedsb.init_lr`);
clients train only the r x r matrix R of every adapted module, and the server averages R
exactly: the mean of the clients' `B R_i A` is `B mean(R_i) A`, where LoRA-FedAvg's mean of
B and of A is not the mean of their products. An upload is `r^2` numbers a module instead
of LoRA's `r (in + out)`.

Here the first step is federated too (`init.py`): `fedsb.init_clients` clients send the
rank-r factors of their step; the server takes the truncated SVD of their weighted sum and
ships A and B to every node once. Both are one-off costs, counted in round 0 and reported
apart (`fedsb_init_bytes_up`, `fedsb_init_bytes_down`). Rounds are LoRA-FedAvg's on the task
whose trainable tensors are the R's: any uplink codec, the server optimizer and client-level
DP apply to R.
"""

from fedpress.methods.fed_sb.settings import INIT_PHASE, INSTALL_PHASE, FedSBConfig, check
from fedpress.methods.lora_fedavg import LORA_FEDERATED_KEYS
from fedpress.registry import EVALUATE, Lazy, Method, register

METHOD = register(
    Method(
        name="fed-sb",
        about="frozen A, B from the first step's SVD; clients train and send only r x r R (Fed-SB)",
        reads=(*LORA_FEDERATED_KEYS, "fedsb"),
        section=("fedsb", FedSBConfig),
        server=Lazy("fedpress.methods.fed_sb.server:build_server"),
        client_task=Lazy("fedpress.methods.fed_sb.task:build_sb_task"),
        client={
            "": Lazy("fedpress.methods.fed_sb.client:train"),
            EVALUATE: Lazy("fedpress.methods.fed_sb.client:evaluate"),
            INIT_PHASE: Lazy("fedpress.methods.fed_sb.init:client_first_step"),
            INSTALL_PHASE: Lazy("fedpress.methods.fed_sb.client:install"),
        },
        validate=check,
        quantized_base=True,
        plan=Lazy("fedpress.methods.fed_sb.plan:plan"),
    )
)
