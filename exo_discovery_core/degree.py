"""Bounded degree (``max_connections``): which members a node keeps connections to.

Without a limit a node connects to every member it knows. With ``max_connections = M`` it ranks
the members it knows in one fixed order of its own, and keeps connections to the first of them:

- its two ring neighbours, the next member id after ours and the one before (wrapping round):
  the ring :mod:`.liveness` heartbeats round, each node its next id among its connections. With
  the ring in the graph every node is heartbeated from below and rides the wave; chosen among
  any 8 connections (100 members), ~40 % of the nodes were not, so their own timers rang and
  a third had no heartbeat at all and probed a silent predecessor every 1.5 s;
- then, up to ``ceil(M / 2)`` with those two, the closest by XOR distance of their ids' SHA-256
  to ours (the rest of a structured part, as in Kademlia: nearby members are a short hop away);
  then
- the others in a pseudo-random order seeded by our own id (the random part, which makes the
  graph an expander: connected, with a diameter that grows as log N).

The order is deterministic, so a node's choice does not flap as members come and go (the ring
neighbours change only when a member joins or leaves next to us); it differs between nodes, so
no member is everyone's favourite. An id ground to sit next to ours takes a ring slot as one
ground close by XOR took a near one; the random part is as large as before. A node dials while it has fewer than
M - 1 connections (``dial_to``; M if M < 4), leaving room for one inbound, so that few nodes
go past M and trim: dialing up to M, every node's M slots filled with its own dials and each inbound then
took it past M, and 100 members with M = 8 trimmed about 300 connections in the 10 s after
they all listed each other. Inbound connections are accepted (the newcomer is told the member
list first) and, past M, the least-preferred connection is closed after ``TRIM_DELAY`` with the
reason ``TRIMMED``; the trimmed peer holds off redialing us for the dialer's refusal retry, and dials
another member instead. Members are known through the relayed signed records (:mod:`.exchange`),
not through the connections.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping

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
        # our own dials stop one short of the limit, room for an inbound; not below M = 4: with
        # two dials of its own each, 12 members with M = 3 split into groups no island check sees
        self.dial_to = max_connections - 1 if max_connections >= 4 else max_connections
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
        """``peers`` most preferred first: our ring neighbours, the closest few by XOR, then the
        pseudo-random rest."""
        others = {p for p in peers if p != self.me}
        near = ring_neighbours(self.me, others)[: self.closest]
        by_distance = sorted(others - set(near), key=lambda p: self._keys(p)[0])
        near += by_distance[: self.closest - len(near)]
        rest = sorted(others - set(near), key=lambda p: self._keys(p)[1])
        return near + rest

    def to_trim(
        self,
        connected: Iterable[PeerId],
        known: Iterable[PeerId],
        links: Mapping[PeerId, Collection[PeerId]] | None = None,
    ) -> list[PeerId]:
        """The connections past the limit, least preferred first (empty if within it): ranked
        among all ``known`` members, as the dialer ranks them, so both keep the same ones.
        Two exceptions, from what each connection says it is connected to (``links``): a peer
        whose only connection we are is kept first (trimmed, it would be cut off: a bootstrap
        node that everyone dials first, and then everyone trims, was); and if no peer of what
        is kept shows a link out of it (a closed group, see :func:`island`), the best-ranked
        peer with a link out is kept instead of the least-preferred other (or, if all are
        alone, the least-preferred of those). What a peer says changes which are kept, never
        how many."""
        up, links = set(connected), links or {}
        ranked = [p for p in self.ranked(up | set(known)) if p in up]
        lone = {p for p in ranked if not set(links.get(p, ())) - {self.me}}
        kept = [p for p in ranked if p in lone] + [p for p in ranked if p not in lone]
        first, rest = kept[: self.limit], kept[self.limit :]
        inside = {self.me, *first}
        # a group none of whose peers shows a link out (a peer that said nothing yet shows
        # none: M liars, one of them silent, held every slot while the links out were trimmed)
        if rest and not any(set(links.get(p, ())) - inside for p in first):
            out = [p for p in rest if set(links.get(p, ())) - inside - {p}]
            # the least-preferred other makes room, else the least-preferred lone peer: a link
            # out outranks a claim of being alone, which every member may make
            others = [p for p in first if p not in lone] or first
            if out:
                first = [p for p in first if p != others[-1]] + [out[0]]
                rest = [others[-1]] + [p for p in rest if p != out[0]]
        return rest[::-1]


def ring_neighbours(me: PeerId, peers: Collection[PeerId]) -> list[PeerId]:
    """The next id after ours among ``peers`` and the one before (wrapping round; one if they are
    the same, none without peers): the ring :mod:`.liveness` heartbeats round."""
    if not peers:
        return []
    after = [p for p in peers if p > me]
    before = [p for p in peers if p < me]
    successor = min(after or peers)
    predecessor = max(before or peers)
    return [successor] if predecessor == successor else [successor, predecessor]


def island(
    me: PeerId,
    kept: Collection[PeerId],
    links: Mapping[PeerId, Collection[PeerId]],
    within: Collection[PeerId] = (),
) -> bool:
    """True if every peer of ``kept`` says (it is in ``links``: it told us) that it is connected
    only to ``me``, to peers of ``kept`` or ``within``: then, with every one of them at its own
    limit too, no one of them would dial out and the group would be cut off from the rest of
    the cluster for good (12 members with 3 connections each formed such a group of 4 about
    one run in five)."""
    inside = {me, *kept, *within}
    return all(p in links and set(links[p]) <= inside for p in kept)
