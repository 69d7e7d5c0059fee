"""Centralized references on the pooled client data, through one local loop (`loop`; the
runs in `runs`):

- `centralized`: LoRA, the upper reference for the LoRA methods;
- `centralized-full`: every parameter trained;
- `centralized-cyclic`: FedCyBGD's block cycle without the federation (the same turns and
  block training), so it isolates what federating the cycle costs.
"""

from fedpress.methods.fedcybgd import check_cybgd, lora_when_peft
from fedpress.registry import Lazy, Method, register

register(
    Method(
        name="centralized",
        about="LoRA on the pooled client data (reference)",
        reads=("lora", "federation.fraction_train"),
        local=Lazy("fedpress.methods.centralized.runs:run_centralized"),
        plan=Lazy("fedpress.methods.centralized.runs:plan"),
        quantized_base=True,
    )
)
register(
    Method(
        name="centralized-full",
        about="full-parameter tuning on the pooled client data (reference)",
        reads=("federation.fraction_train",),
        local=Lazy("fedpress.methods.centralized.runs:run_centralized_full"),
        plan=Lazy("fedpress.methods.centralized.runs:plan"),
    )
)
register(
    Method(
        name="centralized-cyclic",
        about="FedCyBGD's block cycle on the pooled data (reference)",
        reads=(
            "cybgd.allocation",
            "cybgd.turns_per_round",
            "cybgd.include_embeddings",
            "cybgd.peft",
            "cybgd.clients_per_block",
        ),
        reads_when=lora_when_peft,
        local=Lazy("fedpress.methods.centralized.runs:run_centralized_cyclic"),
        plan=Lazy("fedpress.methods.centralized.runs:plan"),
        validate=check_cybgd,
    )
)
