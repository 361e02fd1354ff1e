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
        ok = fields is not None and all(isinstance(f, str) for f in fields)
        parsed = _parse(*fields) if ok and fields is not None else None
        if parsed is None:
            log.debug("peer %s announced a malformed entry; skipped", sender)
            continue
        peer_id, address = parsed
        if peer_id in (me, sender):
            continue
        ip, sender_ip = address.ip, sender_address.ip
        if (
            ip is not None
            and ip.is_loopback
            and sender_ip is not None
            and not sender_ip.is_loopback
        ):
            # the sender reaches that peer on its own host: for us, that is the sender's address
            address = Address(host=sender_address.host, port=address.port)
        candidates.append(
            PeerCandidate(peer_id=peer_id, addresses=(address,), metadata=(("via", str(sender)),))
        )
    return candidates
