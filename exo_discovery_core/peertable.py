"""The peer table: every plugin's latest set, merged by peer id, with what each peer is known by.

Each plugin's set replaces its previous one whole (a peer missing is gone). When a plugin fails,
its last set is kept until a deadline (the peer TTL), so nothing known is lost while it restarts.
Candidates without a peer id are keyed by their addresses until a handshake reveals who answers
there; from then on they merge into that peer's entry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .identity import PeerId
from .models import Address, PeerCandidate

PeerSnapshot = tuple[PeerId | None, tuple[Address, ...], frozenset[str]]
"""What users are told of a peer: a change to any part is a new ``peer_discovered``."""


@dataclass
class Peer:
    """One peer as the node knows it, from all plugins together."""

    key: str
    peer_id: PeerId | None
    addresses: list[Address] = field(default_factory=list)
    sources: set[str] = field(default_factory=set)
    metadata: dict[str, str] = field(default_factory=dict)

    def snapshot(self) -> PeerSnapshot:
        return self.peer_id, tuple(self.addresses), frozenset(self.sources)


@dataclass
class _PluginSet:
    candidates: dict[str, PeerCandidate]
    expires: float | None = None  # set while the plugin is failing


class PeerTable:
    """Merges plugin sets; ``merged()`` is recomputed only when something changed."""

    def __init__(self) -> None:
        self._sets: dict[str, _PluginSet] = {}
        self._aliases: dict[Address, PeerId] = {}
        self._merged: dict[str, Peer] | None = None

    # -- updates ---------------------------------------------------------------------------

    def replace(self, plugin: str, candidates: Iterable[PeerCandidate]) -> None:
        self._sets[plugin] = _PluginSet({c.key: c for c in candidates})
        self._merged = None

    def plugin_failed(self, plugin: str, ttl: float) -> None:
        """Keep ``plugin``'s last set until ``ttl`` seconds from now (unless already expiring)."""
        current = self._sets.get(plugin)
        if current is not None and current.expires is None:
            current.expires = time.monotonic() + ttl

    def expire(self) -> bool:
        """Drop the sets of failed plugins whose TTL ran out; True if anything was dropped."""
        now = time.monotonic()
        gone = [p for p, s in self._sets.items() if s.expires is not None and s.expires <= now]
        for plugin in gone:
            del self._sets[plugin]
        if gone:
            self._merged = None
        return bool(gone)

    def learn(self, address: Address, peer_id: PeerId) -> bool:
        """A handshake at ``address`` revealed ``peer_id``; True if that is news."""
        if self._aliases.get(address) == peer_id:
            return False
        self._aliases[address] = peer_id
        self._merged = None
        return True

    def alias(self, address: Address) -> PeerId | None:
        return self._aliases.get(address)

    # -- reading ---------------------------------------------------------------------------

    def merged(self) -> dict[str, Peer]:
        if self._merged is None:
            self._merged = self._merge()
        return self._merged

    def _merge(self) -> dict[str, Peer]:
        peers: dict[str, Peer] = {}
        for plugin, plugin_set in self._sets.items():
            for candidate in plugin_set.candidates.values():
                peer_id = candidate.peer_id or self._learned_id(candidate.addresses)
                key = str(peer_id) if peer_id else candidate.key
                peer = peers.get(key)
                if peer is None:
                    peer = peers[key] = Peer(key=key, peer_id=peer_id)
                for address in candidate.addresses:
                    if address not in peer.addresses:
                        peer.addresses.append(address)
                peer.sources.add(plugin)
                peer.metadata.update(candidate.metadata)
        return peers

    def _learned_id(self, addresses: Iterable[Address]) -> PeerId | None:
        for address in addresses:
            if address in self._aliases:
                return self._aliases[address]
        return None
