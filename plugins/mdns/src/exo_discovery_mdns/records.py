"""What a node announces (TXT keys) and how an announcement becomes a peer candidate.

TXT record (DNS-SD key=value strings):

* ``id`` — the node's libp2p peer id (``12D3KooW...``), so a peer is known before the handshake;
* ``ns`` — the node's namespace: nodes of another namespace are never reported;
* ``v``  — the record format version, ``1``; a record of another version is ignored;
* ``ck`` — with a cluster key, the fingerprint of the key the node dials with (never the key):
  a node whose key this node does not accept is skipped before any dial.

Kept free of sockets so the rules (namespace filter, self-skip, bad ids) are tested directly.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from exo_discovery_core import Address, PeerCandidate, PeerId

PROTOCOL_VERSION = "1"
MAX_HOSTNAME_LABEL = 40


def txt_properties(
    peer_id: PeerId, namespace: str, key_fingerprints: tuple[str, ...] = ()
) -> dict[str, str]:
    """The TXT record of this node (``key_fingerprints``: NodeInfo's, primary first)."""
    txt = {"id": str(peer_id), "ns": namespace, "v": PROTOCOL_VERSION}
    if key_fingerprints:
        txt["ck"] = key_fingerprints[0]
    return txt


def default_instance_name(peer_id: PeerId, hostname: str | None = None) -> str:
    """``<hostname>-<last 8 of the peer id>``: readable in a browser, unique per node."""
    host = (hostname or socket.gethostname()).split(".", 1)[0] or "exo"
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in host)[:MAX_HOSTNAME_LABEL]
    return f"{host.strip('-') or 'exo'}-{str(peer_id)[-8:]}"


def server_name(instance: str) -> str:
    """The host name (SRV target) of our address records: one per node, so two nodes on one host
    never answer for each other's addresses and one's goodbye never withdraws the other's."""
    label = "".join(c if c.isalnum() or c == "-" else "-" for c in instance.lower())[:63]
    return f"{label.strip('-') or 'exo'}.local."


@dataclass(frozen=True)
class Rejected:
    """Why an announcement is not a peer; ``quiet`` ones are normal (ourselves, another cluster).

    ``namespace`` is set when the node belongs to another namespace: the plugin counts those, so
    a user who sees no peers learns that the nodes are there but in another cluster.
    """

    reason: str
    quiet: bool = False
    namespace: str | None = None


def _decode(properties: Mapping[bytes, bytes | None] | Mapping[str, str | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in properties.items():
        k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if value is None:
            continue
        out[k.lower()] = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return out


def usable_address(text: str, ip_version: str) -> str | None:
    """``text`` if it is an IP of a wanted version that can be dialed, else None.

    A link-local IPv6 address is only usable with its scope (``fe80::1%3``), which zeroconf adds
    from the interface the record came in on.
    """
    bare, _, scope = text.partition("%")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return None
    if (ip.version == 4 and ip_version == "v6") or (ip.version == 6 and ip_version == "v4"):
        return None
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        return None  # loopback: the peer's own loopback, not ours
    if ip.version == 6 and ip.is_link_local and not scope:
        return None
    return text


def candidate_from_service(
    *,
    name: str,
    properties: Mapping[bytes, bytes | None] | Mapping[str, str | None],
    addresses: Iterable[str],
    port: int | None,
    own_id: PeerId,
    namespace: str,
    ip_version: str = "all",
    server: str | None = None,
    key_fingerprints: tuple[str, ...] = (),
) -> PeerCandidate | Rejected:
    """The peer a resolved service stands for, or why it is not one."""
    txt = _decode(properties)
    version = txt.get("v")
    if version != PROTOCOL_VERSION:
        return Rejected(f"record version {version!r}, not {PROTOCOL_VERSION!r}")
    if txt.get("ns") != namespace:
        return Rejected(
            f"namespace {txt.get('ns')!r}, not ours", quiet=True, namespace=txt.get("ns") or "?"
        )
    if txt.get("ck") not in (key_fingerprints or (None,)):
        theirs = f"cluster key {txt['ck'][:16]!r}" if "ck" in txt else "no cluster key"
        return Rejected(f"{theirs}, not one we accept", quiet=True)
    try:
        peer_id = PeerId.parse(txt.get("id", ""))
    except ValueError as exc:
        return Rejected(f"bad peer id: {exc}")
    if peer_id == own_id:
        return Rejected("ourselves", quiet=True)
    if port is None or not 0 < port < 65536:
        return Rejected(f"bad port {port!r}")
    usable = sorted({a for a in (usable_address(t, ip_version) for t in addresses) if a})
    if not usable:
        return Rejected("no usable address (yet)", quiet=True)
    metadata = {"mdns_name": name}
    if server:
        metadata["hostname"] = server.rstrip(".")
    return PeerCandidate(
        peer_id=peer_id,
        addresses=tuple(Address(host=a, port=port) for a in usable),
        metadata=tuple(sorted(metadata.items())),
    )
