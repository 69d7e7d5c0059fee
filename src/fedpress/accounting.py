"""What a run costs: bytes on the wire, client memory, and where the wall time went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

MB = 1_000_000  # what every table and plot means by "MB"


def message_nbytes(obj) -> int:  # noqa: ANN001 - a flwr Message or RecordDict
    """Bytes Flower puts on the wire for this message.

    Flower 1.41 ships a message as a tree of content-addressed objects (the message, its
    records, each array's chunks); this sums their serialised sizes, the same bytes the
    SuperLink and SuperNodes exchange, not an estimate from parameter counts. Identical
    objects (two equal arrays, two equal chunks of one) ship once.

    A planned message (`fedpress plan`, `fedpress.flower.planning`) holds stand-in chunks
    that have a size and no bytes: each counts the bytes its real twin serialises to.
    """
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(
        getattr(node, "planned_nbytes", None) or len(node.deflate())
        for node in get_all_nested_objects(obj).values()
    )


def payload_nbytes(message) -> int:  # noqa: ANN001 - a flwr Message
    """The array payload of this message as Flower counts it (`ArrayRecord.count_bytes()`,
    the figure the FlowerTune leaderboard's communication budget uses): the arrays' data
    without the message framing, metrics and configs that `message_nbytes` includes."""
    if message.has_error():
        return 0
    return sum(record.count_bytes() for record in message.content.array_records.values())


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """`with stopwatch() as t: ...` then `t["s"]` holds the elapsed seconds."""
    box = {"s": 0.0}
    start = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - start
