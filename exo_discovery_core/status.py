"""What a running node shows of itself, and the local endpoint that serves it.

:class:`Status` is one typed snapshot (the node, its plugins, one :class:`PeerRow` per peer); the
CLI's live view and ``exo-discovery peers`` read the same type. A host program reads the same
rows as :class:`PeerView` (``node.peers()``): typed ids and addresses, each with its route class,
exactly what :meth:`Node.report_connection` takes back. The endpoint is a unix socket in
the state directory that answers one JSON document per connection; it is only reachable by users
who can enter the state directory (0700). It takes a snapshot function, not the node.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
from anyio.abc import SocketStream, TaskGroup
from pydantic import BaseModel, ConfigDict

from .files import socket_path
from .identity import PeerId
from .links import LinkClass
from .models import Address
from .routes import RouteClass
from .text import logger

if TYPE_CHECKING:
    from .dialer import DialStatus
    from .peertable import Peer

log = logger("exo_discovery.status")


class PeerRow(BaseModel):
    """One peer as ``exo-discovery peers`` shows it."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    peer_id: str | None  # None until a handshake told who answers at these addresses
    addresses: list[str]  # in the order the dialer tries them
    sources: list[str]
    state: Literal["connected", "known", "incompatible"]  # incompatible: another protocol version
    address: str | None = None  # the one in use, while connected
    link: str | None = None  # the link class of the address in use: thunderbolt, ethernet...
    metadata: dict[str, str] = {}
    meta: dict[str, str] | None = None  # the peer's own, from its signed record
    duplicate_identity: str | None = None  # two live nodes hold this peer's key: the fix
    rtt_ms: float | None = None  # round-trip time, once measured
    route: RouteClass | None = None  # of the address in use, while connected
    last_seen: float | None = None  # time.time() of the last frame (or the disconnect); None: never
    last_reason: str | None = None  # why the last dial failed, while not connected
    retry_in: float | None = None  # seconds until the next dial, while not connected


PluginState = Literal["starting", "ok", "idle", "failing"]
"""``idle``: nothing to do here (not configured, its daemon absent), with how to change that."""


class PluginStatus(BaseModel):
    """One plugin: what ``exo-discovery plugins`` says of it, and its health while it runs."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    name: str
    distribution: str
    version: str
    enabled: bool
    status: str
    error: str | None = None
    healthy: bool | None = None  # None: not running; else False only while failing
    health: str | None = None  # what it sees (ok), how to configure it (idle), why (failing)
    state: PluginState | None = None  # None: not running


class Status(BaseModel):
    """The whole snapshot of a running node."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    peer_id: str
    namespace: str
    port: int
    plugins: list[PluginStatus]
    peers: list[PeerRow]
    duplicate_identity: str | None = None  # another live node holds this node's key: the fix


@dataclass(frozen=True)
class PeerAddress:
    """One address of a peer and how direct the route to it is."""

    address: Address
    route: RouteClass
    link: LinkClass | None = None  # the class of the link it is reached over (None: unknown)


@dataclass(frozen=True)
class PeerView:
    """One peer, typed, for a host program: ``node.peers()`` gives these, and its ``peer_id`` and
    an address (``view.addresses[0].address``) go straight into ``report_connection``."""

    peer_id: PeerId | None  # None until a handshake told who answers at these addresses
    addresses: tuple[PeerAddress, ...]  # in the order the dialer tries them
    sources: frozenset[str]
    state: Literal["connected", "known", "incompatible"]  # incompatible: another protocol version
    address: Address | None = None  # the one in use, while connected
    link: LinkClass | None = None  # the link class of ``address``
    metadata: Mapping[str, str] = field(default_factory=dict)  # what the plugins said of it
    meta: Mapping[str, str] | None = None  # its own signed record's (None: no record known)
    duplicate_identity: str | None = None  # two live nodes hold this peer's key: the fix
    rtt: float | None = None  # seconds, once measured
    last_reason: str | None = None  # why the last dial failed, while not connected
    retry_in: float | None = None  # seconds until the next dial, while not connected
    last_seen: float | None = None  # time.time() of the last frame (or the disconnect); None: never

    @property
    def route(self) -> RouteClass | None:
        """The route class of the address in use, while connected."""
        if self.address is None:
            return None
        return next((a.route for a in self.addresses if a.address == self.address), None)

    def row(self) -> PeerRow:
        """The same peer as ``exo-discovery peers --json`` shows it."""
        return PeerRow(
            peer_id=self.peer_id,
            addresses=[str(a.address) for a in self.addresses],
            sources=sorted(self.sources),
            state=self.state,
            address=str(self.address) if self.address else None,
            link=str(self.link) if self.link is not None else None,
            metadata=dict(self.metadata),
            meta=dict(self.meta) if self.meta is not None else None,
            duplicate_identity=self.duplicate_identity,
            rtt_ms=round(self.rtt * 1000, 3) if self.rtt is not None else None,
            route=self.route,
            last_seen=self.last_seen,
            last_reason=self.last_reason,
            retry_in=round(self.retry_in, 1) if self.retry_in is not None else None,
        )


def peer_views(
    peers: Mapping[str, Peer],
    connected: Mapping[PeerId, Address | None],
    dials: Mapping[str, DialStatus],
    order: Callable[[Iterable[Address]], list[Address]] = list,
    route: Callable[[Address], RouteClass] = lambda address: "public",
    rtts: Mapping[PeerId, float] | None = None,
    *,
    heard: Mapping[PeerId, float] | None = None,
    last_up: Mapping[PeerId, float] | None = None,
    meta: Callable[[PeerId], Mapping[str, str] | None] = lambda peer_id: None,
    duplicate: Callable[[PeerId], str | None] = lambda peer_id: None,
    link: Callable[[Address], LinkClass] | None = None,
) -> list[PeerView]:
    """The table with connection state; connected peers first, then by id.

    ``heard`` (seconds since a connected peer's last frame) and ``last_up`` (when a peer went
    down, ``time.time()``) give each its last-seen time.
    """
    heard, last_up, now = heard or {}, last_up or {}, time.time()

    def last_seen(peer_id: PeerId | None, up: bool) -> float | None:
        if peer_id is None:
            return None
        if up:  # a connection the host program reported has no frames of ours: it says it is up
            return now - heard[peer_id] if peer_id in heard else now
        return last_up.get(peer_id)

    def linked(address: Address | None) -> LinkClass | None:
        """The link class of ``address`` (loopback, thunderbolt, ethernet, wifi, ...)."""
        return link(address) if link is not None and address is not None else None

    def routed(addresses: Iterable[Address]) -> tuple[PeerAddress, ...]:
        return tuple(PeerAddress(a, route(a), linked(a)) for a in order(addresses))

    views: dict[str, PeerView] = {}
    for key, peer in peers.items():
        up = peer.peer_id is not None and peer.peer_id in connected
        in_use = connected.get(peer.peer_id) if up and peer.peer_id else None
        dial = None if up else dials.get(key)
        views[key] = PeerView(
            peer_id=peer.peer_id,
            addresses=routed(peer.addresses),
            sources=frozenset(peer.sources),
            state="connected" if up else "incompatible" if dial and dial.incompatible else "known",
            address=in_use,
            link=linked(in_use),
            metadata=dict(peer.metadata),
            rtt=(rtts or {}).get(peer.peer_id) if up and peer.peer_id else None,
            meta=meta(peer.peer_id) if peer.peer_id else None,
            duplicate_identity=duplicate(peer.peer_id) if peer.peer_id else None,
            last_reason=dial.last_reason if dial else None,
            retry_in=dial.retry_in if dial else None,
            last_seen=last_seen(peer.peer_id, up),
        )
    for peer_id, address in connected.items():
        if str(peer_id) not in views:  # it dialed us; no source knows it
            views[str(peer_id)] = PeerView(
                peer_id=peer_id,
                addresses=routed([address] if address else []),
                sources=frozenset({"inbound"}),
                state="connected",
                address=address,
                link=linked(address),
                rtt=(rtts or {}).get(peer_id),
                last_seen=last_seen(peer_id, True),
                meta=meta(peer_id),
                duplicate_identity=duplicate(peer_id),
            )
    return sorted(views.values(), key=lambda view: (view.state != "connected", str(view.peer_id)))


async def serve(
    state_dir: Path, snapshot: Callable[[], Status], stack: AsyncExitStack, tg: TaskGroup
) -> None:
    path = socket_path(state_dir)
    if len(os.fsencode(path)) >= 104:
        log.warning(
            "state dir path too long for a unix socket; `exo-discovery peers` will not work"
        )
        return
    path.unlink(missing_ok=True)
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)
    stack.callback(path.unlink, missing_ok=True)

    async def answer(stream: SocketStream) -> None:
        async with stream:
            await stream.send(snapshot().model_dump_json().encode())

    async def serve_until_stopped() -> None:
        async with listener:
            await listener.serve(answer)

    tg.start_soon(serve_until_stopped)


async def query(state_dir: Path, timeout: float = 3.0) -> Status:
    """Read a running node's status; ConnectionError if none is running with this state dir."""
    path = socket_path(state_dir)
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_unix(path) as stream:
                chunks = [chunk async for chunk in _receive_all(stream)]
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ConnectionError(f"no node is running with state dir {state_dir} ({path})") from exc
    return Status.model_validate_json(b"".join(chunks))


async def _receive_all(stream: SocketStream) -> AsyncIterator[bytes]:
    while True:
        try:
            yield await stream.receive()
        except anyio.EndOfStream:
            return
