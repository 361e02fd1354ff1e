"""Peer exchange: connected nodes tell each other whom they are connected to.

With it one bootstrap address (or one mDNS answer) is enough for a full mesh: a node that joins
through A learns A's peers and dials them. Peers learned so come with their peer id, so the
handshake refuses anyone else at that address. A node announces at most ``MAX_PEERS`` peers, and
what a peer announced is forgotten when it disconnects.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable
from typing import Any

from .identity import InvalidPeerId, PeerId
from .ip import parse_ip
from .models import Address, PeerCandidate

SOURCE = "exchange"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)
MAX_PEERS = 100
log = logging.getLogger("exo_discovery.exchange")


def announcement(peers: Iterable[tuple[PeerId, Address]]) -> dict[str, Any]:
    entries = [{"id": str(pid), "addr": str(addr)} for pid, addr in peers]
    return {"type": "peers", "peers": entries[:MAX_PEERS]}


@functools.lru_cache(maxsize=4096)
def _parse(peer_id: str, addr: str) -> tuple[PeerId, Address] | None:
    """One entry, parsed once: in a mesh every node hears the same entries again and again."""
    try:
        host, _, port = addr.rpartition(":")
        address = Address(host=host, port=int(port))
        if address.ip is None and not _HOSTNAME.fullmatch(address.host):
            return None  # neither an IP address nor a DNS name
        return PeerId.parse(peer_id), address
    except (InvalidPeerId, TypeError, ValueError):
        return None


def read(
    message: dict[str, Any], *, sender: PeerId, sender_address: Address, me: PeerId
) -> list[PeerCandidate]:
    """The candidates in a ``peers`` frame; malformed entries are skipped, never fatal."""
    entries = message.get("peers")
    if not isinstance(entries, list):
        log.debug("peer %s sent a peers frame without a list", sender)
        return []
    candidates = []
    for entry in entries[:MAX_PEERS]:
        fields = (entry.get("id"), entry.get("addr")) if isinstance(entry, dict) else None
        if fields is None or not all(isinstance(f, str) for f in fields):
            log.debug("peer %s announced a malformed entry; skipped", sender)
            continue
        candidate = _candidate(fields[0], fields[1], str(sender), sender_address.host)
        if candidate is None:
            log.debug("peer %s announced a malformed entry; skipped", sender)
        elif candidate.peer_id not in (me, sender):
            candidates.append(candidate)
    return candidates


@functools.lru_cache(maxsize=8192)
def _candidate(peer_id: str, addr: str, sender: str, sender_host: str) -> PeerCandidate | None:
    """One entry as a candidate, built once: in a forming mesh the same entries arrive from
    every peer, over and over, and building models is what costs."""
    parsed = _parse(peer_id, addr)
    if parsed is None:
        return None
    peer, address = parsed
    ip, sender_ip = address.ip, parse_ip(sender_host)
    if ip is not None and ip.is_loopback and sender_ip is not None and not sender_ip.is_loopback:
        # the sender reaches that peer on its own host: for us, that is the sender's address
        address = Address(host=sender_host, port=address.port)
    return PeerCandidate(peer_id=peer, addresses=(address,), metadata=(("via", sender),))


class Heard:
    """Everything connected peers announced, merged incrementally: a frame that only repeats
    what others already said changes nothing, and costs a set difference, not a re-merge."""

    def __init__(self) -> None:
        self._by_sender: dict[PeerId, dict[str, PeerCandidate]] = {}
        self._count: dict[str, int] = {}
        self._candidates: dict[str, PeerCandidate] = {}

    def update(self, sender: PeerId, candidates: list[PeerCandidate]) -> bool:
        """``sender``'s new list (empty when it is gone); True if the union changed."""
        new = {c.key: c for c in candidates}
        old = self._by_sender.pop(sender, {})
        if new:
            self._by_sender[sender] = new
        changed = False
        for key in new.keys() - old.keys():
            self._count[key] = self._count.get(key, 0) + 1
            if self._count[key] == 1:
                self._candidates[key] = new[key]
                changed = True
        for key in old.keys() - new.keys():
            self._count[key] -= 1
            if self._count[key] == 0:
                del self._count[key], self._candidates[key]
                changed = True
        return changed

    def candidates(self) -> list[PeerCandidate]:
        return list(self._candidates.values())
