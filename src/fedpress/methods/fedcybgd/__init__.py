"""FedCyBGD: full-parameter federated tuning, one block per client turn, in a cycle, with a
compressed download (docs/fedcybgd.md).

- `blocks`: the model's blocks (decoder layers; optionally embeddings and head);
- `download`: the compressed download and what each node holds;
- `turns`: the allocation of blocks to clients and training one block;
- `server`, `client`: the two sides of a turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedpress.methods.fedcybgd.settings import CybgdConfig, check_cybgd
from fedpress.registry import Lazy, Method, register

if TYPE_CHECKING:
    from fedpress.config import RunConfig


def lora_when_peft(config: RunConfig) -> tuple[str, ...]:
    return ("lora",) if config.cybgd.peft else ()


def codec_label(config: dict) -> str:
    """FedCyBGD compresses its download its own way (docs/fedcybgd.md)."""
    cybgd = config.get("cybgd") or {}
    prune = "prune-change" if cybgd.get("prune_target") == "delta" else "prune"
    parts = [
        f"{label} {cybgd[key]}"
        for key, label in (("layer_drop_ratio", "drop"), ("prune_ratio", prune))
        if cybgd.get(key)
    ] + (["delta"] if cybgd.get("delta_sync", True) else [])
    return f"{config.get('uplink_codec', 'none')} / {' + '.join(parts) or 'full model'}"


METHOD = register(
    Method(
        name="fedcybgd",
        about="full-parameter tuning, one block per client turn in a cycle (FedCyBGD)",
        # No downlink_codec: the download is compressed by [cybgd] (drop, prune, delta sync).
        reads=("cybgd", "uplink_codec", "codec", "federation"),
        section=("cybgd", CybgdConfig),
        reads_when=lora_when_peft,
        server=Lazy("fedpress.methods.fedcybgd.server:FedCyBGDServer"),
        client_task=Lazy("fedpress.methods.fedcybgd.turns:cybgd_task"),
        client={"": Lazy("fedpress.methods.fedcybgd.client:train")},
        validate=check_cybgd,
        codec_label=codec_label,
        report_tables=Lazy("fedpress.methods.fedcybgd.report:tables"),
        plan=Lazy("fedpress.methods.fedcybgd.plan:plan"),
    )
)
