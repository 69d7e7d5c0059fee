"""Peak memory of one piece of client work (a training turn), measured, not computed.

Two figures, the same for every method (summary.json and metrics.jsonl):
- `peak`: the client's resident memory at its peak during training, the weights it holds
  included (`client_peak_mem_bytes`): what a device must have;
- `bytes`: what training adds above the loaded model (`client_train_mem_bytes`).

`ru_maxrss` would be a lifetime high-water mark (Flower's simulation reuses one process for
many clients), so both are measured around the training call only:

- on CUDA: `torch.cuda.max_memory_allocated` minus the allocation at the start (peak reset);
- on Linux CPU: the kernel's own high-water mark of the process's resident memory (`VmHWM`),
  reset just before the call (`/proc/self/clear_refs`), minus the RSS just before it: exact,
  and free (no sampling thread competing with training for the cores);
- elsewhere on CPU: the process RSS sampled by a background thread every `interval_s` during
  the call (peaks shorter than the interval can be missed).
Before taking the baseline, freed heap memory is handed back to the OS (glibc `malloc_trim`),
so memory a previous turn freed but the allocator kept cannot hide this turn's allocations.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark; False where that is not possible."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open(_STATUS) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _release_free_heap() -> None:
    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL(name).malloc_trim(0)


@contextmanager
def training_memory(device: torch.device, interval_s: float = 0.002) -> Iterator[dict[str, int]]:
    """`with training_memory(dev) as mem: ...` then `mem["peak"]` is the absolute peak and
    `mem["bytes"]` what the call added above the memory at its start."""
    box = {"bytes": 0, "baseline": 0, "peak": 0}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        box["baseline"] = base
        try:
            yield box
        finally:
            torch.cuda.synchronize(device)
            box["peak"] = int(torch.cuda.max_memory_allocated(device))
            box["bytes"] = max(0, box["peak"] - base)
        return
    _release_free_heap()
    process = psutil.Process()
    base = process.memory_info().rss
    box["baseline"] = base
    if _reset_peak_rss():
        try:
            yield box
        finally:
            box["peak"] = max(_peak_rss(), base)
            box["bytes"] = max(0, box["peak"] - base)
        return
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        box["peak"] = peak[0]
        box["bytes"] = max(0, peak[0] - base)
