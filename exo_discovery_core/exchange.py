"""Peer exchange: connected nodes tell each other whom they are connected to, in signed records.

With it one bootstrap address (or one mDNS answer) is enough for a full mesh: a node that joins
through A learns A's peers and dials them. What travels is each peer's own signed record
(:mod:`.records`), never a bare address: a sender can say *that* it is connected to a peer, but
only the peer itself can say where it listens or what its metadata is. So an address heard this
way is only a hint for reaching that peer, which the handshake with it confirms, and a stranger
cannot point us elsewhere: a record it did not sign fails, an old one loses to a newer one.

Two messages: ``{"type": "peers", "peers": [peer id, ...]}`` (the sender's connections now; it
replaces the sender's previous list) and ``{"type": "records", "records": [base64, ...]}`` (the
records of those peers that this receiver was not sent yet, in as many messages as it takes).
Bounds: at most ``per_sender`` peers taken from one sender, ``total`` from all senders together
(first come); a record is kept only for a peer some sender lists; what a sender said is
forgotten when it disconnects.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import random
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from . import wire
from .identity import InvalidPeerId, PeerId
from .models import Address, PeerCandidate
from .peertable import PeerTable
from .records import PeerRecord, RecordError, signer, verify
from .routes import usable_from_peer

SOURCE = "exchange"
MAX_PEERS = 100  # ids in one peers message: per_sender is capped at this
ANNOUNCE_DELAY = (0.1, 0.3)  # seconds; random, so a mesh's announcements do not all coincide
_ROOM = wire.MAX_FRAME - 64  # a records message's body, with room for its JSON around it
log = logging.getLogger("exo_discovery.exchange")


def _b64(record: PeerRecord) -> str:
    return base64.b64encode(record.envelope).decode()


class Outbox:
    """What we tell each connected peer: our connections' ids, and each record once (again
    only when a newer one replaces it)."""

    def __init__(self) -> None:
        self._sent: dict[PeerId, dict[PeerId, int]] = {}
        self._lists: dict[PeerId, list[str]] = {}

    def messages(
        self, recipient: PeerId, records: Mapping[PeerId, PeerRecord]
    ) -> list[dict[str, Any]]:
        """The messages to send ``recipient`` now, given the records of our connections."""
        others = [r for pid, r in records.items() if pid != recipient][:MAX_PEERS]
        sent = self._sent.setdefault(recipient, {})
        ids = [str(r.peer_id) for r in others]
        out: list[dict[str, Any]] = []
        if self._lists.get(recipient) != ids:
            out.append({"type": "peers", "peers": ids})
            self._lists[recipient] = ids
        batch: list[str] = []
        size = 0
        for record in others:
            if sent.get(record.peer_id) == record.seq:
                continue
            encoded = _b64(record)
            if batch and size + len(encoded) + 3 > _ROOM:
                out.append({"type": "records", "records": batch})
                batch, size = [], 0
            batch.append(encoded)
            size += len(encoded) + 3
            sent[record.peer_id] = record.seq
        if batch:
            out.append({"type": "records", "records": batch})
        return out

    def own(self, record: PeerRecord) -> dict[str, Any]:
        """Our own new record (new metadata), for every connected peer."""
        return {"type": "records", "records": [_b64(record)]}

    def forget(self, recipient: PeerId) -> None:
        self._sent.pop(recipient, None)
        self._lists.pop(recipient, None)


class Heard:
    """What connected peers told us: whom each is connected to, and the newest record of each.

    ``candidates()`` is the exchange's peer set: one candidate per listed peer of which a
    record is known, at the usable addresses of its newest record.
    """

    def __init__(self, me: PeerId, *, per_sender: int, total: int) -> None:
        self.me = me
        self.per_sender = min(per_sender, MAX_PEERS)
        self.total = total
        self._lists: dict[PeerId, list[PeerId]] = {}
        self._local: dict[PeerId, bool] = {}
        self._count: dict[PeerId, int] = {}
        self._records: dict[PeerId, PeerRecord] = {}

    # -- what senders say ---------------------------------------------------------------------

    def peers(self, sender: PeerId, message: dict[str, Any], *, sender_on_this_host: bool) -> bool:
        """A ``peers`` message; True if the set of listed peers changed."""
        entries = message.get("peers")
        if not isinstance(entries, list):
            log.debug("peer %s sent a peers message without a list", sender)
            entries = []
        wanted: list[PeerId] = []
        for entry in entries[:MAX_PEERS]:
            peer_id = _peer_id(entry)
            if peer_id is None or peer_id in (self.me, sender) or peer_id in wanted:
                continue
            if len(wanted) >= self.per_sender:
                break
            if peer_id not in self._count and len(self._count) >= self.total:
                continue  # known through exchange in all: first come
            wanted.append(peer_id)
        self._local[sender] = sender_on_this_host
        return self._set(sender, wanted)

    def records(self, sender: PeerId, message: dict[str, Any]) -> list[PeerRecord]:
        """A ``records`` message: the records that were news (kept only for listed peers, or
        the sender's own); bad ones are skipped, never fatal."""
        entries = message.get("records")
        if not isinstance(entries, list):
            return []
        listed = set(self._lists.get(sender, ()))
        news = []
        for entry in entries[: MAX_PEERS + 1]:
            record = _record(entry, wanted=listed | {sender})
            if record is None:
                log.debug("peer %s sent a record not wanted or not valid; skipped", sender)
                continue
            if record.peer_id == sender:
                news.append(record)  # the sender's own new record: the node keeps it
            elif record.peer_id in listed and record.newer_than(self._records.get(record.peer_id)):
                self._records[record.peer_id] = record
                news.append(record)
        return news

    def forget(self, sender: PeerId) -> bool:
        """``sender`` disconnected: what it said is no longer heard; True if the set changed."""
        self._local.pop(sender, None)
        return self._set(sender, [])

    def _set(self, sender: PeerId, wanted: list[PeerId]) -> bool:
        old = set(self._lists.pop(sender, ()))
        if wanted:
            self._lists[sender] = wanted
        new = set(wanted)
        for peer_id in new - old:
            self._count[peer_id] = self._count.get(peer_id, 0) + 1
        for peer_id in old - new:
            self._count[peer_id] -= 1
            if not self._count[peer_id]:
                del self._count[peer_id]
                self._records.pop(peer_id, None)
        return new != old

    # -- what we make of it -------------------------------------------------------------------

    def record(self, peer_id: PeerId) -> PeerRecord | None:
        return self._records.get(peer_id)

    def candidates(self, direct: Mapping[PeerId, PeerRecord] | None = None) -> list[PeerCandidate]:
        """One candidate per listed peer whose record (relayed, or ``direct`` if newer) names
        an address we may dial."""
        local = {
            pid for sender, ids in self._lists.items() if self._local.get(sender) for pid in ids
        }
        result = []
        for peer_id in self._count:
            record = self._records.get(peer_id)
            mine = (direct or {}).get(peer_id)
            if mine is not None and mine.newer_than(record):
                record = mine
            if record is None:
                continue
            hints = usable_hints(record.addresses, sender_on_this_host=peer_id in local)
            if hints:
                result.append(PeerCandidate(peer_id=peer_id, addresses=hints))
        return result


def usable_hints(addresses: Iterable[Address], *, sender_on_this_host: bool) -> tuple[Address, ...]:
    return tuple(
        a for a in addresses if usable_from_peer(a, sender_on_this_host=sender_on_this_host)
    )


def _peer_id(entry: Any) -> PeerId | None:
    if not isinstance(entry, str) or len(entry) > 64:
        return None
    try:
        return PeerId.parse(entry)
    except InvalidPeerId:
        return None


def _record(entry: Any, wanted: set[PeerId]) -> PeerRecord | None:
    """The record in ``entry`` if it is one of ``wanted``'s and verifies (checked in that order:
    a signature is only worth checking for a peer we would keep)."""
    if not isinstance(entry, str) or len(entry) > 2 * wire.MAX_FRAME:
        return None
    try:
        data = base64.b64decode(entry, validate=True)
        return _verified(data) if signer(data) in wanted else None
    except (binascii.Error, ValueError):  # not base64; an envelope that does not parse
        return None


@functools.lru_cache(maxsize=1024)
def _verified(data: bytes) -> PeerRecord | None:
    """In a mesh every peer relays the same records again and again: each is checked once
    (and a bad one sent again costs no second check)."""
    try:
        return verify(data)
    except RecordError:
        return None


class Links(Protocol):
    """What peer exchange needs of the connection manager."""

    def connected(self) -> Mapping[PeerId, Address]:
        """The peers connected now, with the address in use."""
        ...

    def records(self) -> Mapping[PeerId, PeerRecord]:
        """The signed record of each connected peer."""
        ...

    def update_record(self, record: PeerRecord) -> bool:
        """A connected peer's own newer record; True if it replaced the old one."""
        ...

    async def send(self, peer_id: PeerId, message: dict[str, Any]) -> bool:
        """Send ``message`` to one connected peer; False if that failed."""
        ...


class PeerExchange:
    """Peer exchange as one more source of the peer table, and the announcements we send.

    What each connected peer said is kept (and forgotten when it disconnects); the peers it
    listed, at the addresses of their newest records, are the table's ``exchange`` set.
    Announcements are coalesced: a burst of connection changes (a mesh forming) makes one send.
    """

    def __init__(
        self, me: PeerId, table: PeerTable, links: Links, *, per_sender: int, total: int
    ) -> None:
        self.enabled = True
        self._table = table
        self._links = links
        self._heard = Heard(me, per_sender=per_sender, total=total)
        self._outbox = Outbox()
        self._announcing = False

    def record(self, peer_id: PeerId) -> PeerRecord | None:
        """The newest record of ``peer_id`` that a peer relayed (None if none did)."""
        return self._heard.record(peer_id)

    def received(self, sender: PeerId, sender_address: Address, message: dict[str, Any]) -> bool:
        """A message of the exchange from ``sender``; True if it was one (handled)."""
        kind = message["type"]
        if kind not in ("peers", "records"):
            return False
        if not self.enabled:
            return True
        if kind == "peers":
            ip = sender_address.ip
            here = ip is not None and ip.is_loopback
            if self._heard.peers(sender, message, sender_on_this_host=here):
                self._refresh()
            return True
        news = self._heard.records(sender, message)
        for record in news:
            if record.peer_id == sender:  # its own new record (new metadata)
                self._links.update_record(record)
        if news:
            self._refresh()
        return True

    def forget(self, sender: PeerId) -> None:
        """``sender`` disconnected: what it said is no longer heard, what we sent it forgotten."""
        self._outbox.forget(sender)
        if self._heard.forget(sender):
            self._refresh()

    def _refresh(self) -> None:
        self._table.replace(SOURCE, self._heard.candidates(self._links.records()))

    def announce(self, tg: TaskGroup) -> None:
        """Tell every connected peer whom we are connected to, soon (one send per burst)."""
        if not self.enabled or self._announcing:
            return
        self._announcing = True

        async def send() -> None:
            await anyio.sleep(random.uniform(*ANNOUNCE_DELAY))
            self._announcing = False
            records = self._links.records()
            for peer_id in records:
                for message in self._outbox.messages(peer_id, records):
                    if not await self._links.send(peer_id, message):
                        self._outbox.forget(peer_id)  # it is going; start afresh if it returns
                        break

        tg.start_soon(send)

    async def publish(self, record: PeerRecord) -> None:
        """Our own new record (new metadata): to every connected peer, at once."""
        message = self._outbox.own(record)
        for peer_id in self._links.records():
            await self._links.send(peer_id, message)
