"""Keeping a process that never quantizes from importing bitsandbytes.

peft imports bitsandbytes whenever it is installed (`peft.helpers`, `peft.tuners.lora.bnb`),
and bitsandbytes' CPU backend pulls in torch's compiler stack: ~2 s of every process that
imports peft (measured: `import torch, transformers, peft` 7.2-8.8 s against 5.0-6.3 s
without it, 2 cores). The deployment engine starts a ClientApp process for every message, so
a deployed node pays it for every train or evaluate message of a run that never quantizes.

A process that serves one run (`fedpress run`, a `flwr-clientapp` or `flwr-serverapp`
process, a simulation actor) and whose run does not quantize marks bitsandbytes absent in
`sys.modules` before anything imports it: `importlib.util.find_spec` then answers None, so
peft and transformers take their no-bitsandbytes paths. A process that serves several runs
(a test process calling the ClientApp directly, `fedpress compare`) is left as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path

# sys.argv[0] of the processes that serve exactly one run: the fedpress CLI (its `run`),
# Flower's per-message ClientApp and per-run ServerApp processes, and Ray's simulation actors
# (which the simulation shuts down with it).
ONE_RUN_PROCESSES = frozenset({"fedpress", "flwr-clientapp", "flwr-serverapp", "default_worker.py"})


def serves_one_run() -> bool:
    program = Path(sys.argv[0])
    return program.name in ONE_RUN_PROCESSES or program.parts[-2:] == ("fedpress", "__main__.py")


def skip_bitsandbytes(quantize: str) -> None:
    """Mark bitsandbytes absent when this process serves one run, that run does not quantize
    and nothing has imported bitsandbytes (or peft) yet; otherwise change nothing."""
    if quantize != "none" or not serves_one_run():
        return
    if "bitsandbytes" in sys.modules or "peft" in sys.modules:
        return
    sys.modules["bitsandbytes"] = None  # type: ignore[assignment]


def bitsandbytes_skipped() -> bool:
    return "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None
