"""Exponential backoff with full jitter, shared by the plugin supervisor, the poller and the dialer."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# The node's own: its jitter never draws from (or moves) a host program's global random state.
JITTER = random.Random()


@dataclass
class Backoff:
    """Delays that double from ``initial`` to ``maximum``; each is drawn in [delay/2, delay].

    Half-jitter keeps a lower bound (a restarting plugin never spins) while spreading many
    nodes that failed together.
    """

    initial: float
    maximum: float
    factor: float = 2.0
    _attempt: int = field(default=0, init=False)

    def next(self) -> float:
        delay = min(self.maximum, self.initial * self.factor**self._attempt)
        self._attempt = min(self._attempt + 1, 64)
        return JITTER.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
