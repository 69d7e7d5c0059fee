"""How the simulation engine sizes its clients: cores per client, clients at once.

Its own module, not `flower.simulation`: a simulated node reads `client_cpus` for its thread
count (`node.use_threads`), and `simulation` imports the ClientApp, which imports `node`;
this module imports neither torch nor the simulation engine.
"""

from __future__ import annotations

import os

from fedpress.config import RunConfig


def client_cpus(config: RunConfig) -> int:
    """Cores per simulated client: `federation.client_cpus`, or (0) this machine's cores
    spread over the clients sampled per round."""
    cpus = os.cpu_count() or 1
    if config.federation.client_cpus > 0:
        return min(config.federation.client_cpus, cpus)
    sampled = max(1, round(config.num_clients * config.federation.fraction_train))
    return max(1, cpus // min(sampled, cpus))


def parallel_slots(config: RunConfig) -> int:
    """How many clients the simulation engine runs at once on this machine."""
    return max(1, (os.cpu_count() or 1) // client_cpus(config))
