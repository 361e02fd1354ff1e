"""Bounded degree (``max_connections``): which members a node keeps connections to.

Without a limit a node connects to every member it knows. With ``max_connections = M`` it ranks
the members it knows in one fixed order of its own, and keeps connections to the first of them:

- the ``ceil(M / 2)`` closest by XOR distance of their ids' SHA-256 to ours (a structured part,
  as in Kademlia: every node has near neighbours, so nearby members are a short hop away), then
- the others in a pseudo-random order seeded by our own id (the random part, which makes the
  graph an expander: connected, with a diameter that grows as log N).

The order is deterministic, so a node's choice does not flap as members come and go; it differs
between nodes, so no member is everyone's favourite. A node dials while it has fewer than M
connections; inbound connections are accepted (the newcomer is told the member list first) and,
past M, the least-preferred connection is closed after ``TRIM_DELAY`` with the reason
``TRIMMED``; the trimmed peer holds off redialing us for the dialer's refusal retry, and dials
another member instead. Members are known through the relayed signed records (:mod:`.exchange`),
not through the connections.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from .identity import PeerId

TRIMMED = "max_connections"  # the reason given to a connection closed to keep the limit
TRIM_DELAY = 1.0  # seconds an extra connection lives: long enough to hand over the member list


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest(), "big")


class Preference:
    """One node's fixed ranking of other members (lower rank: kept first)."""

    def __init__(self, me: PeerId, max_connections: int) -> None:
        self.me = me
        self.limit = max_connections
        self.closest = math.ceil(max_connections / 2)
        self._mine = _digest(str(me))
        self._cache: dict[PeerId, tuple[int, int]] = {}

    def _keys(self, peer_id: PeerId) -> tuple[int, int]:
        keys = self._cache.get(peer_id)
        if keys is None:
            if len(self._cache) > 65536:  # ids are cheap to make: what we remember is bounded
                self._cache.clear()
            text = str(peer_id)
            keys = self._cache[peer_id] = (
                _digest(text) ^ self._mine,
                _digest(f"{self.me}/{text}"),
            )
        return keys

    def ranked(self, peers: Iterable[PeerId]) -> list[PeerId]:
        """``peers`` most preferred first: the closest few by XOR, then the pseudo-random rest."""
        others = {p for p in peers if p != self.me}
        by_distance = sorted(others, key=lambda p: self._keys(p)[0])
        near = by_distance[: self.closest]
        rest = sorted(others - set(near), key=lambda p: self._keys(p)[1])
        return near + rest

    def to_trim(self, connected: Iterable[PeerId], known: Iterable[PeerId]) -> list[PeerId]:
        """The connections past the limit, least preferred first (empty if within it): ranked
        among all ``known`` members, as the dialer ranks them, so both keep the same ones."""
        up = set(connected)
        kept = [p for p in self.ranked(up | set(known)) if p in up]
        return kept[self.limit :][::-1]
