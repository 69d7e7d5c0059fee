"""A federated run's checkpoint: what a resumed run needs to continue exactly where the last
complete round left off (the global state, the method's own state, the sampler's draws).

One safetensors file (`fedpress.checkpoint`, shared with the centralized references): the
method's extra tensors under the `SERVER_STATE` prefix beside the global state, the JSON rest
in its metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedpress.checkpoint import load_checkpoint, save_checkpoint
from fedpress.flower.sampling import Sampler
from fedpress.flower.server import FederatedServer

# Checkpoint tensors under this prefix are `FederatedServer.state_tensors`, the rest the global
# state (parameter names hold no "/").
SERVER_STATE = "server-state/"


@dataclass
class Resumed:
    """Where the checkpoint left off: the last complete round, and the run's time until then."""

    round: int
    elapsed_s: float


def restore_run(server: FederatedServer, sampler: Sampler) -> Resumed | None:
    """Load the last checkpoint of `server.out_dir` into the server and the sampler; None when
    the run never finished a round (it starts afresh)."""
    checkpoint = load_checkpoint(server.out_dir, reference=server.global_state())
    if checkpoint is None:
        return None
    tensors, state = checkpoint
    extra = {
        k[len(SERVER_STATE) :]: tensors.pop(k) for k in list(tensors) if k.startswith(SERVER_STATE)
    }
    server.load_global_state(tensors)
    server.load_state_tensors(extra)
    sampler.load_state_dict(state.get("sampler", {}))
    server.load_state_dict(state.get("method", {}))
    return Resumed(state["round"], state["elapsed_s"])


def checkpoint_round(
    server: FederatedServer, sampler: Sampler, server_round: int, elapsed_s: float
) -> None:
    """The checkpoint after `server_round` (replacing the previous one atomically)."""
    extra = {f"{SERVER_STATE}{k}": v for k, v in server.state_tensors().items()}
    save_checkpoint(
        server.out_dir,
        {**server.global_state(), **extra},
        {
            "round": server_round,
            "elapsed_s": elapsed_s,
            "sampler": sampler.state_dict(),
            "method": server.state_dict(),
        },
    )
