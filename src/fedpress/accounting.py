"""What a run costs: bytes on the wire, client memory, and where the wall time went."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects


def message_nbytes(obj) -> int:  # noqa: ANN001 - a flwr Message or RecordDict
    """Bytes Flower puts on the wire for this message.

    Flower 1.41 ships a message as a tree of content-addressed objects (the message, its
    records, each array's chunks); this sums their serialised sizes, the same bytes the
    SuperLink and SuperNodes exchange, not an estimate from parameter counts.
    """
    return sum(len(node.deflate()) for node in get_all_nested_objects(obj).values())


def peak_memory_bytes(device: torch.device | None = None) -> int:
    """Peak memory of this process: CUDA allocator peak on GPU, peak RSS on CPU."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """`with stopwatch() as t: ...` then `t["s"]` holds the elapsed seconds."""
    box = {"s": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start
