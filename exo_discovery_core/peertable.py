"""The peer table: every source's latest set, merged by peer id, and what each write changed.

A source is a plugin or a built-in one (peer exchange). Each source's set replaces its previous
one whole (a peer missing is gone). When a plugin fails, its last set is kept until a deadline
(the peer TTL), so nothing known is lost while it restarts. Candidates without a peer id are keyed
by their addresses until a handshake reveals who answers there; from then on they merge into that
peer's entry. This node itself is never in the table. Every write returns a :class:`TableDiff`
and hands it to ``on_change``: the diff is what the node turns into peer events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from .identity import PeerId
from .models import Address, PeerCandidate


@dataclass(frozen=True)
class Peer:
    """One peer as the node knows it, from all sources together (a snapshot: never mutated)."""

    key: str
    peer_id: PeerId | None
    addresses: tuple[Address, ...]
    sources: frozenset[str]
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)
    meta: tuple[tuple[str, str], ...] | None = None
    """The peer's own metadata, from its signed record (None while no record is known)."""

    def same_as(self, other: Peer) -> bool:
        """What users are told of a peer: a change to any of these is an update."""
        return (self.peer_id, self.addresses, self.sources, self.meta) == (
            other.peer_id,
            other.addresses,
            other.sources,
            other.meta,
        )


@dataclass(frozen=True)
class Identified:
    """An address-only peer whose id a handshake revealed; ``now`` is the entry it became."""

    was: Peer
    now: Peer


@dataclass(frozen=True)
class TableDiff:
    """What one write to the table changed, entry by entry."""

    added: tuple[Peer, ...] = ()
    changed: tuple[Peer, ...] = ()
    removed: tuple[Peer, ...] = ()
    identified: tuple[Identified, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.identified)


@dataclass
class _SourceSet:
    candidates: dict[str, PeerCandidate]
    expires: float | None = None  # set while the plugin is failing


class PeerTable:
    """Merges source sets into peers keyed by peer id (or, unidentified, by addresses)."""

    def __init__(
        self,
        me: PeerId,
        on_change: Callable[[TableDiff], None] = lambda diff: None,
        meta_of: Callable[[PeerId], tuple[tuple[str, str], ...] | None] = lambda peer_id: None,
    ) -> None:
        self.me = me
        self._on_change = on_change
        self._meta_of = meta_of
        self._sets: dict[str, _SourceSet] = {}
        self._aliases: dict[Address, PeerId] = {}
        self._merged: dict[str, Peer] = {}

    # -- writes: each returns (and reports) what changed -----------------------------------

    def replace(self, source: str, candidates: Iterable[PeerCandidate]) -> TableDiff:
        """``source``'s whole current set (an empty one: it knows nobody now)."""
        self._sets[source] = _SourceSet({c.key: c for c in candidates})
        return self._remerge()

    def source_failed(self, source: str, ttl: float) -> None:
        """Keep ``source``'s last set until ``ttl`` seconds from now (unless already expiring)."""
        current = self._sets.get(source)
        if current is not None and current.expires is None:
            current.expires = time.monotonic() + ttl

    def next_expiry(self) -> float | None:
        """When the first failed source's set runs out (``time.monotonic``), None if none will."""
        return min((k.expires for k in self._sets.values() if k.expires is not None), default=None)

    def expire(self) -> TableDiff:
        """Drop the sets of failed sources whose TTL ran out."""
        now = time.monotonic()
        gone = [
            s for s, kept in self._sets.items() if kept.expires is not None and kept.expires <= now
        ]
        for source in gone:
            del self._sets[source]
        return self._remerge() if gone else TableDiff()

    def learn(self, address: Address, peer_id: PeerId) -> TableDiff:
        """A handshake at ``address`` revealed ``peer_id`` (this node's own id: it is us).

        The table is merged again only when a candidate known by its addresses alone lists
        this one: every dial teaches the id of its address, and in a mesh nearly all of them
        were dialed by id already (a merge per dial was most of the table's work)."""
        if self._aliases.get(address) == peer_id:
            return TableDiff()
        self._aliases[address] = peer_id
        if not any(
            c.peer_id is None and address in c.addresses
            for kept in self._sets.values()
            for c in kept.candidates.values()
        ):
            return TableDiff()
        return self._remerge()

    def records_changed(self, peer_id: PeerId) -> TableDiff:
        """``peer_id``'s signed record (so its metadata) may be new: look again, if the table
        lists that peer with other metadata than its record's now."""
        peer = self._merged.get(str(peer_id))
        if peer is None or peer.meta == self._meta_of(peer_id):
            return TableDiff()
        return self._remerge()

    # -- reading ---------------------------------------------------------------------------

    def merged(self) -> Mapping[str, Peer]:
        """Every peer, by key; a new mapping after each change, so it can be kept as a snapshot."""
        return self._merged

    def get(self, peer_id: PeerId) -> Peer | None:
        return self._merged.get(str(peer_id))

    # -- internals -------------------------------------------------------------------------

    def _remerge(self) -> TableDiff:
        old, new = self._merged, self._merge()
        self._merged = new
        diff = self._diff(old, new)
        if diff:
            self._on_change(diff)
        return diff

    def _merge(self) -> dict[str, Peer]:
        groups: dict[str, tuple[PeerId | None, list[Address], set[str], dict[str, str]]] = {}
        for source, kept in self._sets.items():
            for candidate in kept.candidates.values():
                peer_id = candidate.peer_id or self._learned_id(candidate.addresses)
                if peer_id == self.me:
                    continue
                key = str(peer_id) if peer_id else candidate.key
                group = groups.get(key)
                if group is None:
                    groups[key] = (peer_id, list(candidate.addresses), {source}, {})
                    group = groups[key]
                else:
                    group[1].extend(a for a in candidate.addresses if a not in group[1])
                    group[2].add(source)
                group[3].update(candidate.metadata)
        merged = {}
        for key, (peer_id, addresses, sources, metadata) in groups.items():
            meta = self._meta_of(peer_id) if peer_id is not None else None
            peer = Peer(key, peer_id, tuple(addresses), frozenset(sources), metadata, meta)
            old = self._merged.get(key)
            # an unchanged entry keeps its old snapshot: the diff then costs an identity check
            merged[key] = (
                old if old is not None and old == peer and old.metadata == metadata else peer
            )
        return merged

    def _diff(self, old: Mapping[str, Peer], new: Mapping[str, Peer]) -> TableDiff:
        identified: list[Identified] = []
        removed: list[Peer] = []
        for key in sorted(old.keys() - new.keys()):
            was = old[key]
            learned = self._learned_id(was.addresses) if was.peer_id is None else None
            if learned is not None and str(learned) in new:
                identified.append(Identified(was, new[str(learned)]))
            else:
                removed.append(was)  # gone, or it turned out to be this node
        told = {i.now.key for i in identified}  # the identification says all about these
        added = [p for k, p in new.items() if k not in old and k not in told]
        changed = [
            p
            for k, p in new.items()
            if k in old and p is not old[k] and k not in told and not p.same_as(old[k])
        ]
        return TableDiff(tuple(added), tuple(changed), tuple(removed), tuple(identified))

    def _learned_id(self, addresses: Iterable[Address]) -> PeerId | None:
        for address in addresses:
            if address in self._aliases:
                return self._aliases[address]
        return None
