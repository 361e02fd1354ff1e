"""The pipeline of a running node: sources -> peer table -> dialer -> connections, wired.

Sources (the plugins, and peer exchange) write into the :class:`PeerTable`; each change becomes
peer events and wakes the :class:`Dialer`; the :class:`ConnectionManager`'s ups and downs become
connection events and ``on_connection`` calls, and the ids its handshakes learn go back into the
table. Data moves one way; each stage is testable without the others. :class:`Node` makes one
``Pipeline`` at its start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from anyio.abc import TaskGroup

from . import exchange
from .config import NodeConfig
from .connections import ConnectionManager
from .dialer import Dialer
from .events import NodeEvent, connection_event, peer_events
from .identity import Identity, PeerId
from .models import Address, ConnectionEvent, ConnectionState
from .peertable import PeerTable, TableDiff
from .routes import LocalNetworks, RouteClass, by_preference, route_class
from .sources import PluginSources
from .status import PeerView, peer_views

log = logging.getLogger("exo_discovery.node")


LAST_UP_KEPT = 4096  # disconnected peers whose last-seen time is remembered


class Pipeline:
    """Everything that exists while a node runs, made at its start; the connections' listener."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        port: int,
        tg: TaskGroup,
        plugins: PluginSources,
        publish: Callable[[NodeEvent], None],
    ) -> None:
        self.identity, self.port, self.tg, self.plugins = identity, port, tg, plugins
        self.publish = publish
        self.local = LocalNetworks()
        self.sources_at_up: dict[PeerId, frozenset[str]] = {}
        self.host_connections: dict[PeerId, Address | None] = {}  # reported by the host program
        self.last_up: dict[PeerId, float] = {}  # when each peer was last connected (time.time)
        self.table = PeerTable(identity.peer_id, on_change=self.table_changed)
        self.connections = ConnectionManager(identity, config, port, self)
        self.exchange = exchange.PeerExchange(identity.peer_id, self.table, self.connections)
        self.exchange.enabled = config.exchange
        self.dialer = Dialer(
            identity.peer_id,
            self.table.merged,
            self.connections,
            order=self.ordered,
            redial_max=config.redial_max,
            mutual_source=exchange.SOURCE,
            verify_only=not config.connect,
        )

    def ordered(self, addresses: Iterable[Address]) -> list[Address]:
        return by_preference(addresses, self.local)

    def route(self, address: Address) -> RouteClass:
        return route_class(address, self.local)

    def peer_views(self) -> list[PeerView]:
        """The table as users see it: with each peer's connection, last dial and route."""
        return peer_views(
            self.table.merged(),
            {**self.connections.connected(), **self.host_connections},
            self.dialer.status(),
            self.ordered,
            self.route,
            self.connections.round_trips(),
            heard=self.connections.last_heard(),
            last_up=self.last_up,
        )

    def table_changed(self, diff: TableDiff) -> None:
        for event in peer_events(diff):
            self.publish(event)
        self.dialer.wake()

    # -- the connection manager's outlet, and the host program's reports --------------------

    def host_reported(
        self, peer_id: PeerId, connected: bool, address: Address | None, reason: str
    ) -> None:
        """A host program with its own transport says a peer came or went; a report that
        changes nothing (up twice) is ignored, so there is one event per transition."""
        if connected and peer_id not in self.host_connections:
            self.host_connections[peer_id] = address
            self.connection_up(peer_id, address)
        elif not connected and peer_id in self.host_connections:
            del self.host_connections[peer_id]
            self.connection_down(peer_id, reason)

    def identified(self, address: Address, peer_id: PeerId) -> None:
        self.table.learn(address, peer_id)

    def received(self, peer_id: PeerId, address: Address, message: dict[str, Any]) -> None:
        self.exchange.received(peer_id, address, message)

    def connection_up(self, peer_id: PeerId, address: Address | None) -> None:
        self._changed(ConnectionState.CONNECTED, peer_id, address, "")

    def connection_down(self, peer_id: PeerId, reason: str) -> None:
        self.last_up.pop(peer_id, None)
        self.last_up[peer_id] = time.time()
        if len(self.last_up) > LAST_UP_KEPT:  # ids are cheap to make: remember a bounded few
            del self.last_up[next(iter(self.last_up))]
        self._changed(ConnectionState.DISCONNECTED, peer_id, None, reason)
        self.dialer.peer_down(peer_id)
        self.exchange.forget(peer_id)

    def _changed(
        self, state: ConnectionState, peer_id: PeerId, address: Address | None, reason: str
    ) -> None:
        peer = self.table.get(peer_id)
        known = peer.sources if peer else frozenset({"inbound"})
        if state is ConnectionState.CONNECTED:
            sources = self.sources_at_up[peer_id] = known
            log.info("connected to %s at %s", peer_id, address)
        else:
            sources = self.sources_at_up.pop(peer_id, known)  # as told when it came
            log.info("disconnected from %s: %s", peer_id, reason)
        event = ConnectionEvent(
            peer_id=peer_id, state=state, address=address, sources=sources, reason=reason
        )
        self.publish(connection_event(event, peer))
        self.plugins.notify(self.tg, event)
        self.exchange.announce(self.tg)
