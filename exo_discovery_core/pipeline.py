"""The pipeline of a running node: sources -> peer table -> dialer -> connections, wired.

Sources (the plugins, and peer exchange) write into the :class:`PeerTable`; each change becomes
peer events and wakes the :class:`Dialer`; the :class:`ConnectionManager`'s ups and downs become
connection events and ``on_connection`` calls, and the ids its handshakes learn go back into the
table. Data moves one way; each stage is testable without the others. :class:`Node` makes one
``Pipeline`` at its start.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from anyio.abc import Listener, SocketStream, TaskGroup

from . import degree, exchange, records
from .config import NodeConfig
from .connections import DUPLICATE, SHUTDOWN, ConnectionManager, closed_by_peer
from .degree import TRIM_DELAY, TRIMMED, Preference
from .dialer import Dialer
from .events import NodeEvent, connection_event, peer_events
from .identity import Identity, PeerId
from .limits import InboundGate, TokenBucket, accept_forever
from .models import Address, ConnectionEvent, ConnectionState, NodeInfo
from .peertable import PeerTable, TableDiff
from .records import LocalRecord, PeerRecord, RecordStore, other_boot
from .routes import LocalNetworks, Paths, RouteClass, route_class
from .sources import PluginSources
from .status import PeerView, peer_views
from .text import logger

log = logger("exo_discovery.node")

DIRECT_RECORDS = 4096  # records of peers we had a handshake with (each one a gated connection)


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
        record: LocalRecord,
    ) -> None:
        self.identity, self.port, self.tg, self.plugins = identity, port, tg, plugins
        self.config = config
        self.publish = publish
        self.record = record
        self.records = RecordStore(limit=DIRECT_RECORDS)  # from handshakes: each its peer's own
        self.duplicates: dict[PeerId, set[str]] = {}  # peers seen with two live boot ids
        self.identity_conflict: str | None = None  # another live node holds our key
        self._twin_boot: str | None = None
        self.local = LocalNetworks()
        self.paths = Paths(self.local)
        self.sources_at_up: dict[PeerId, frozenset[str]] = {}
        self.host_connections: dict[PeerId, Address | None] = {}  # reported by the host program
        self.last_up: dict[PeerId, float] = {}  # when each peer was last connected (time.time)
        self.table = PeerTable(
            identity.peer_id, on_change=self.table_changed, meta_of=self._meta_items
        )
        self.connections = ConnectionManager(identity, config, port, self, record)
        self.exchange = exchange.PeerExchange(
            identity.peer_id,
            self.table,
            self.connections,
            per_sender=config.exchange_peers_per_sender,
            total=config.exchange_peers_max,
        )
        self.exchange.enabled = config.exchange
        self.exchange.relay = config.max_connections is not None
        self.exchange.own = lambda: self.record.record
        self.exchange.refute = lambda: self.set_meta(self.record.record.meta)  # a higher seq
        self.preference = (
            Preference(identity.peer_id, config.max_connections) if config.max_connections else None
        )
        self._trimming = False
        self.dialer = Dialer(
            identity.peer_id,
            self.table.merged,
            self.connections,
            paths=self.paths,
            redial_max=config.redial_max,
            mutual_source=exchange.SOURCE,
            verify_only=not config.connect,
            learned=TokenBucket(config.learned_dial_rate, config.learned_dial_burst),
            max_connections=config.max_connections,
            island=self.island,
        )

    def serve(self, listener: Listener[SocketStream]) -> None:
        """Keep the connections, and accept peers on ``listener`` through the inbound gate."""
        config = self.config
        self.connections.start(self.tg)
        gate = InboundGate(
            config.max_inbound_connections, config.max_inbound_per_ip, config.max_handshakes
        )
        self.tg.start_soon(accept_forever, listener, self.connections.handle_inbound, self.tg, gate)

    @property
    def info(self) -> NodeInfo:
        config = self.config
        return NodeInfo(
            self.identity.peer_id,
            config.namespace,
            self.port,
            config.advertised(self.port),
            cluster_key_fingerprints=self.connections.credentials.keyring.fingerprints,
            interfaces=config.interface_filter,
            advertised_explicitly=bool(config.advertise_addresses),
        )

    def ordered(self, addresses: Iterable[Address]) -> list[Address]:
        return self.paths.ordered(addresses)

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
            meta=self.meta_of,
            duplicate=self.duplicate_note,
            link=self.paths.link,
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
            self.connection_down(peer_id, reason, ours=False)

    def identified(self, address: Address, peer_id: PeerId) -> None:
        self.table.learn(address, peer_id)

    def received(self, peer_id: PeerId, address: Address, message: dict[str, Any]) -> None:
        if message["type"] == "duplicate_identity":
            self._twin_notice(peer_id, message)
        else:
            self.exchange.received(peer_id, address, message)
            if message["type"] == "peers" and self.island():
                self.dialer.wake()  # it may dial one member past the limit, out of the island

    def island(self) -> bool:
        """With ``max_connections``: our connections, by what they say, are connected only
        among themselves and to us, while other members are known (see :func:`degree.island`)."""
        if self.preference is None:
            return False
        connected, me = self.connections.connected(), self.identity.peer_id
        if not connected or not degree.island(me, connected, self._links(connected)):
            return False
        return any(p not in connected and p != me for p in self.exchange.listed_ids())

    def _links(self, connected: Iterable[PeerId]) -> dict[PeerId, set[PeerId]]:
        """What each connection says it is connected to (those that said so yet)."""
        said = {p: self.exchange.connections_of(p) for p in connected}
        return {p: links for p, links in said.items() if links is not None}

    # -- signed records: metadata, and one key held twice -------------------------------------

    def record_of(self, peer_id: PeerId) -> PeerRecord | None:
        """A peer's newest signed record: from its own handshake or relayed by another."""
        direct = self.connections.record(peer_id) or self.records.get(peer_id)
        relayed = self.exchange.record(peer_id)
        return relayed if relayed is not None and relayed.newer_than(direct) else direct

    def meta_of(self, peer_id: PeerId) -> dict[str, str] | None:
        record = self.record_of(peer_id)
        return record.meta if record is not None else None

    def _meta_items(self, peer_id: PeerId) -> tuple[tuple[str, str], ...] | None:
        record = self.record_of(peer_id)
        return record.meta_items if record is not None else None

    def authenticated(self, record: PeerRecord, live: PeerRecord | None) -> dict[str, Any] | None:
        """Keep the newest record, and see whether another live node holds the same key: then
        both are told (the notice for the new connection is returned: it goes out first)."""
        other = other_boot(record, live=live, newest=self.records.get(record.peer_id))
        if self.records.offer(record):
            self.table.records_changed(record.peer_id)  # its metadata is known now
        if other is None:
            return None
        boots = self.duplicates.setdefault(record.peer_id, set())
        if not {record.boot, other.boot} <= boots:
            boots |= {record.boot, other.boot}
            message = self.duplicate_note(record.peer_id)
            log.warning("peer %s: %s", record.peer_id, message)
            self.publish(
                NodeEvent(event="duplicate_identity", peer_id=record.peer_id, reason=message)
            )
        if live is not None and live.boot == other.boot:
            self.tg.start_soon(self.connections.send, record.peer_id, _twin_notice(record))
        return _twin_notice(other)

    def duplicate_note(self, peer_id: PeerId | None) -> str | None:
        """What ``peers`` says of a peer whose key two live nodes hold (None if not so)."""
        boots = self.duplicates.get(peer_id) if peer_id is not None else None
        if not boots:
            return None
        return (
            f"{len(boots)} live nodes hold this peer's key (boot ids "
            f"{', '.join(sorted(b[:8] for b in boots))}); on one of them run "
            "`exo-discovery id --regenerate`"
        )

    def _twin_notice(self, sender: PeerId, message: dict[str, Any]) -> None:
        """A peer says another node holds our key, and shows that node's record: believed only
        if our own key signed it and its boot id is not ours."""
        try:
            data = base64.b64decode(str(message.get("record", "")), validate=True)
            record = records.verify(data, self.identity.peer_id)
        except (binascii.Error, ValueError):
            log.debug("peer %s sent a duplicate_identity notice that does not verify", sender)
            return
        self.twin(record, via=sender)

    def twin(self, record: PeerRecord, via: PeerId | None = None) -> None:
        """Another node holds our key: said once per boot id of it, with the fix."""
        if record.peer_id != self.identity.peer_id or record.boot == self.record.boot:
            return
        if self._twin_boot == record.boot:
            return
        self._twin_boot = record.boot
        fix = f"exo-discovery id --regenerate --state-dir {self.config.state_dir}"
        where = ", ".join(map(str, record.addresses)) or "no address"
        self.identity_conflict = (
            f"another node holds this node's key ({self.identity.peer_id}): boot id "
            f"{record.boot[:8]} at {where}{f', seen by {via}' if via else ''}; on one of the "
            f"two run `{fix}`"
        )
        log.warning("%s", self.identity_conflict)
        addresses = [str(a) for a in record.addresses]
        self.publish(
            NodeEvent(event="duplicate_identity", peer_id=self.identity.peer_id,
                      addresses=addresses or None, reason=self.identity_conflict)
        )  # fmt: skip

    def set_meta(self, meta: dict[str, str]) -> PeerRecord:
        """New metadata: a new signed record (higher seq), sent to every connected peer."""
        record = self.record.update(meta=meta)
        self.tg.start_soon(self.exchange.publish, record)
        return record

    def connection_up(self, peer_id: PeerId, address: Address | None) -> None:
        self._changed(ConnectionState.CONNECTED, peer_id, address, "")
        self.exchange.joined(peer_id)
        if (
            self.preference is not None
            and len(self.connections.connected()) > self.preference.limit
        ):
            self._trim_soon()

    def _trim_soon(self) -> None:
        """Past ``max_connections``: after ``TRIM_DELAY`` (the newcomer has the member list by
        then) close the least-preferred connections until within the limit, all at once (one
        after the other, each bye's wait of up to 0.5 s added up: a node past the limit by ten
        stayed past it for up to 5 s more)."""
        if self._trimming:
            return
        self._trimming = True

        async def trim() -> None:
            await anyio.sleep(TRIM_DELAY)
            self._trimming = False
            assert self.preference is not None
            known = [p.peer_id for p in self.table.merged().values() if p.peer_id is not None]
            connected = self.connections.connected()
            for peer_id in self.preference.to_trim(connected, known, self._links(connected)):
                log.debug("closing the connection to %s to keep max_connections", peer_id)
                self.tg.start_soon(self.connections.close, peer_id, TRIMMED)

        self.tg.start_soon(trim)

    def path_changed(self, peer_id: PeerId, old: Address, new: Address) -> None:
        peer = self.table.get(peer_id)
        sources = self.sources_at_up.get(peer_id, peer.sources if peer else frozenset())
        event = ConnectionEvent(
            peer_id=peer_id,
            state=ConnectionState.CONNECTED,
            address=new,
            sources=sources,
            reason=f"from {old}",
        )
        self.publish(connection_event(event, peer, *self._path(new), kind="path_changed"))

    def _path(self, address: Address | None) -> tuple[str | None, float | None]:
        """The link class and round trip (ms) of ``address``, as events show them."""
        if address is None:
            return None, None
        rtt = self.paths.rtt(address)
        return str(self.paths.link(address)), None if rtt is None else round(rtt * 1000, 2)

    def connection_down(self, peer_id: PeerId, reason: str, *, ours: bool = True) -> None:
        """A connection ended; one of ours (not a host program's) that ended for good (not a
        trim, a duplicate or our own shutdown) is reported gone to the others, with relay."""
        self.last_up.pop(peer_id, None)
        self.last_up[peer_id] = time.time()
        if len(self.last_up) > LAST_UP_KEPT:  # ids are cheap to make: remember a bounded few
            del self.last_up[next(iter(self.last_up))]
        self._changed(ConnectionState.DISCONNECTED, peer_id, None, reason)
        self.dialer.peer_down(peer_id, reason)
        self.exchange.forget(peer_id)
        if ours and reason not in (TRIMMED, closed_by_peer(TRIMMED), DUPLICATE, SHUTDOWN):
            self.exchange.departed(peer_id, self.record_of(peer_id))  # relay: said, hop by hop

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
        meta = (self.meta_of(peer_id) or {}) if state is ConnectionState.CONNECTED else {}
        event = ConnectionEvent(
            peer_id=peer_id, state=state, address=address, sources=sources, reason=reason,
            meta=meta,
        )  # fmt: skip
        self.publish(connection_event(event, peer, *self._path(address)))
        self.plugins.notify(self.tg, event)
        self.exchange.announce(self.tg)


def _twin_notice(record: PeerRecord) -> dict[str, Any]:
    return {"type": "duplicate_identity", "record": record.relayed}
