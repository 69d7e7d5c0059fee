"""A Grid wrapper that shows clients replying as they go.

Flower's `send_and_receive` blocks until every reply is in (and the deployment grid polls
only every 3 s). This wrapper does the same push-then-pull with a short poll interval and a
progress bar per round, and hands the replies over as they arrive (a server that aggregates
each one at once need not hold them all); every other Grid call passes straight through.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid
from tqdm import tqdm

POLL_S = 0.2


class ProgressGrid:
    def __init__(self, grid: Grid, label: str) -> None:
        self._grid = grid
        self._label = label
        self._calls = 0

    def __getattr__(self, name: str):  # noqa: ANN204 - delegate the rest of the Grid API
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Push now; the replies one by one as they arrive (nothing kept here, so a caller
        that drops each reply once read never holds them all)."""
        messages = list(messages)
        if not messages:  # e.g. the evaluate step of a strategy that evaluates on the server
            return iter(())
        self._calls += 1
        pending = set(self._grid.push_messages(messages))
        del messages
        return self._arriving(pending, timeout)

    def _arriving(self, pending: set[str], timeout: float | None) -> Iterator[Message]:
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        with tqdm(
            total=len(pending),
            desc=f"{self._label} {self._calls}: clients",
            unit="client",
            leave=False,
        ) as bar:
            while pending and time.monotonic() < deadline:
                new = list(self._grid.pull_messages(pending))
                pending.difference_update(m.metadata.reply_to_message_id for m in new)
                if new:
                    bar.update(len(new))
                while new:
                    yield new.pop(0)
                if pending:
                    time.sleep(POLL_S)
