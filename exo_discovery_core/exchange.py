"""Peer exchange: connected nodes tell each other whom they are connected to.

With it one bootstrap address (or one mDNS answer) is enough for a full mesh: a node that joins
through A learns A's peers and dials them. Peers learned so come with their peer id, so the
handshake refuses anyone else at that address. A node announces at most ``MAX_PEERS`` peers, and
what a peer announced is forgotten when it disconnects.
"""

from __future__ import annotations

import functools
import logging
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from .identity import InvalidPeerId, PeerId
from .ip import parse_ip
from .models import Address, PeerCandidate
from .peertable import PeerTable

SOURCE = "exchange"
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
)
MAX_PEERS = 100
ANNOUNCE_DELAY = (0.1, 0.3)  # seconds; random, so a mesh's announcements do not all coincide
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


class Announcing(Protocol):
    """What peer exchange needs of the connection manager."""

    def connected(self) -> Mapping[PeerId, Address]:
        """The peers connected now, with the address in use."""
        ...

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` to every connected peer."""
        ...


class PeerExchange:
    """Peer exchange as one more source of the peer table, and the announcements we send.

    What each connected peer announced is kept (and forgotten when it disconnects); the union
    is the table's ``exchange`` set. Announcements of our own connections are coalesced: a burst
    of connection changes (a mesh forming) makes one send.
    """

    def __init__(self, me: PeerId, table: PeerTable, links: Announcing) -> None:
        self.enabled = True
        self._me = me
        self._table = table
        self._links = links
        self._heard = Heard()
        self._last_frame: dict[PeerId, Any] = {}
        self._announcing = False

    def received(self, sender: PeerId, sender_address: Address, message: dict[str, Any]) -> None:
        if not self.enabled or message["type"] != "peers":
            return
        if self._last_frame.get(sender) == message.get("peers"):
            return  # the same list again: nothing to parse, nothing changed
        self._last_frame[sender] = message.get("peers")
        candidates = read(message, sender=sender, sender_address=sender_address, me=self._me)
        if self._heard.update(sender, candidates):
            self._table.replace(SOURCE, self._heard.candidates())

    def forget(self, sender: PeerId) -> None:
        """``sender`` disconnected: what it announced is no longer heard."""
        self._last_frame.pop(sender, None)
        if self._heard.update(sender, []):
            self._table.replace(SOURCE, self._heard.candidates())

    def announce(self, tg: TaskGroup) -> None:
        """Tell every connected peer whom we are connected to, soon (one send per burst)."""
        if not self.enabled or self._announcing:
            return
        self._announcing = True

        async def send() -> None:
            await anyio.sleep(random.uniform(*ANNOUNCE_DELAY))
            self._announcing = False
            await self._links.broadcast(announcement(self._links.connected().items()))

        tg.start_soon(send)
