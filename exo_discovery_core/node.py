"""The node: runs the plugins, keeps the peer table, dials candidates, serves its status.

    async with Node(NodeConfig(namespace="lab")) as node, node.events() as events:
        async for event in events:
            print(event.to_json())

A host program with its own transport (exo) sets ``connect = false`` and reports connections
itself with :meth:`Node.report_connection`; everything else (discovery, the table, the hooks)
stays the same.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream
from pydantic import BaseModel

from . import exchange, status
from .backoff import Backoff
from .config import CONFIG_ENV, ConfigSource, NodeConfig, option_meta
from .connections import Connection, ConnectionManager
from .events import EventHub, NodeEvent
from .handshake import HandshakeError, SelfConnection
from .identity import Identity, PeerId
from .models import (
    Address,
    ConnectionEvent,
    ConnectionState,
    DiscoveryContext,
    NodeInfo,
    PeerCandidate,
)
from .peertable import Peer, PeerSnapshot, PeerTable
from .plugins import PluginHost, PluginInfo, installed_entry_points
from .routes import LocalNetworks, by_preference, local_addresses
from .supervisor import supervise

log = logging.getLogger("exo_discovery.node")

ON_CONNECTION_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
REDIAL_INITIAL = 0.25
ANNOUNCE_DELAY = (0.1, 0.3)  # seconds; random, so a mesh's announcements do not all coincide
EXCHANGE_SECOND_DIAL = 2.0


@dataclass
class _DialState:
    backoff: Backoff
    next_at: float = 0.0
    busy: bool = False
    is_self: bool = False


@dataclass
class PluginHealth:
    ok: bool = True
    message: str = "ok"
    since: float = field(default_factory=time.time)


class Node:
    """One discovery node; use as an async context manager."""

    def __init__(
        self,
        config: NodeConfig | None = None,
        *,
        source: ConfigSource | None = None,
        plugins: Mapping[str, object] | None = None,
        entry_points: bool = True,
        identity: Identity | None = None,
        host: PluginHost | None = None,
    ) -> None:
        """``source`` supplies plugin config (file, env, flags); ``plugins`` registers objects
        directly; ``entry_points=False`` loads no installed plugin (tests, embedding); ``host``
        passes plugins the caller already loaded (the CLI, which needed their flags first)."""
        self.source = source or ConfigSource(env={})
        self.config = config or self.source.node_config()
        self.host = host or PluginHost()
        self._entry_points = entry_points
        self._extra_plugins = dict(plugins or {})
        self._identity = identity
        self._plugin_configs: dict[str, BaseModel] | None = None
        self.table = PeerTable()
        self.health: dict[str, PluginHealth] = {}
        self._hub = EventHub()
        self._contexts: dict[str, DiscoveryContext[Any]] = {}
        self._dial_states: dict[str, _DialState] = {}
        self._wake = anyio.Event()
        self._known: dict[str, PeerSnapshot] = {}
        self._sources_of: dict[PeerId, frozenset[str]] = {}
        self._exchanged = exchange.Heard()
        self._exchange_heard: dict[PeerId, Any] = {}
        self._announcing = False
        self._local = LocalNetworks()
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self.port = self.config.port
        self.connections: ConnectionManager | None = None

    @classmethod
    def from_settings(
        cls,
        *,
        plugins: Mapping[str, Mapping[str, Any]] | None = None,
        use_file: bool | Path = False,
        use_env: bool = False,
        entry_points: bool = True,
        register: Mapping[str, object] | None = None,
        identity: Identity | None = None,
        **node: Any,
    ) -> Node:
        """A node from settings in code, keyed by field name as in the file: ``node`` holds the
        ``[node]`` keys (``namespace="lab", port=0``), ``plugins`` the ``[plugins]`` table
        (``{"bootstrap": {"peers": [...]}, "disabled": ["mdns"]}``).

        The file (``use_file=True`` finds it as the CLI does; a path names it) and the
        environment (``use_env``) apply only when asked, under the settings. Unknown keys and bad
        values raise :class:`ConfigError` naming the key, now rather than at start; ``register``
        adds plugin objects by name, as ``Node(plugins=...)`` does.
        """
        path = use_file if isinstance(use_file, Path) else None
        if use_file is True and os.environ.get(CONFIG_ENV):  # the file is found as the CLI does
            path = Path(os.environ[CONFIG_ENV])
        source = ConfigSource.load(
            path,
            env=None if use_env else {},
            settings={"node": node, "plugins": dict(plugins or {})},
            find_file=use_file is True,
        )
        built = cls(
            source.node_config(),
            source=source,
            plugins=register,
            entry_points=entry_points,
            identity=identity,
        )
        built.plugin_configs()  # every plugin's settings are checked here, not at start
        return built

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        assert self._identity is not None, "the node is not started"
        return self._identity.peer_id

    def load_plugins(self) -> None:
        """Import the enabled plugins (once); safe to call before start, e.g. for ``plugins``."""
        if self.host.infos:
            return
        installed = sorted(set(self._extra_plugins))
        if self._entry_points:
            installed = sorted(set(installed_entry_points()) | set(self._extra_plugins))
            self.host.load_installed(self.source.plugin_selection(installed))
        self.source.check_plugin_tables(installed)
        for name, plugin in self._extra_plugins.items():
            self.host.register(name, plugin)

    def plugin_configs(self) -> dict[str, BaseModel]:
        """Each loaded plugin's config, validated once (ConfigError naming the key if bad)."""
        if self._plugin_configs is None:
            self.load_plugins()
            models = [("node", NodeConfig)] + [
                (name, self.host.config_model(name)) for name in self.host.loaded()
            ]
            self.source.check_flags(
                {
                    flag
                    for _, model in models
                    for info in model.model_fields.values()
                    if (flag := option_meta(info)[0])
                }
            )
            self._plugin_configs = {
                name: self.source.plugin_config(name, model) for name, model in models[1:]
            }
        return self._plugin_configs

    async def __aenter__(self) -> Node:
        configs = self.plugin_configs()
        self.config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._identity is None:
            self._identity = Identity.load_or_create(self.config.state_dir)
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            listener = await anyio.create_tcp_listener(
                local_host=self.config.listen_host or None,
                local_port=self.config.port,
                reuse_port=False,
            )
            stack.push_async_callback(listener.aclose)
            self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            self.connections = ConnectionManager(
                self._identity,
                self.config,
                on_up=self._on_up,
                on_down=self._on_down,
                on_identified=self._on_identified,
                on_message=self._on_message,
            )
            self.connections.listen_port = self.port
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.push_async_callback(self._shutdown)
            self.connections.start(self._tg)
            self._tg.start_soon(listener.serve, self.connections.handle_inbound)
            await status.serve(self, stack, self._tg)
            for name, plugin_config in configs.items():
                context = self._contexts[name] = self._context_for(name, plugin_config)
                self._tg.start_soon(self._supervise, context)
            self._tg.start_soon(self._housekeeping)
            if self.config.connect:
                self._tg.start_soon(self._dial_loop)
        except BaseException:
            await stack.__aexit__(*sys.exc_info())
            raise
        self._stack = stack
        log.info(
            "node %s listening on port %d (namespace %r)",
            self.peer_id,
            self.port,
            self.config.namespace,
        )
        self._publish(
            NodeEvent(
                event="started",
                peer_id=str(self.peer_id),
                port=self.port,
                namespace=self.config.namespace,
            )
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        stack, self._stack = self._stack, None
        return await stack.__aexit__(exc_type, exc, tb)

    async def _shutdown(self) -> None:
        if self.connections is not None:
            await self.connections.close_all()
        self._publish(NodeEvent(event="stopped", peer_id=str(self.peer_id)))
        assert self._tg is not None
        self._tg.cancel_scope.cancel()

    @asynccontextmanager
    async def events(
        self, replay: bool = False
    ) -> AsyncIterator[MemoryObjectReceiveStream[NodeEvent]]:
        """Subscribe to events from now on (``async with node.events() as stream``); with
        ``replay``, the node's last 1,000 events come first (what happened before you asked)."""
        async with self._hub.subscribe(replay) as stream:
            yield stream

    # -- what the node knows -------------------------------------------------------------------

    @property
    def info(self) -> NodeInfo:
        """Who we are and where we listen; on every interface, that is each address we have."""
        if self.config.listen_host:
            hosts = [self.config.listen_host]
        else:
            ips = sorted(local_addresses(), key=lambda ip: (ip.version, ip.is_loopback, str(ip)))
            hosts = [str(ip) for ip in ips if not ip.is_link_local] or ["127.0.0.1"]
        addresses = tuple(Address(host=host, port=self.port or 1) for host in hosts)
        return NodeInfo(self.peer_id, self.config.namespace, self.port, addresses)

    def plugin_infos(self) -> list[PluginInfo]:
        return list(self.host.infos_sorted())

    def peers(self) -> list[dict[str, Any]]:
        """The peer table with connection state, as ``exo-discovery peers`` shows it."""
        connected = self.connections.current if self.connections else {}
        rows: dict[str, dict[str, Any]] = {}
        for key, peer in self.table.merged().items():
            if peer.peer_id == self._identity_id():
                continue
            conn = connected.get(peer.peer_id) if peer.peer_id else None
            rows[key] = {
                "peer_id": peer.peer_id,
                "addresses": [str(a) for a in by_preference(peer.addresses, self._local)],
                "sources": sorted(peer.sources),
                "state": "connected" if conn else "known",
                "address": str(conn.address) if conn else None,
                "metadata": peer.metadata,
            }
        for peer_id, conn in connected.items():
            rows.setdefault(
                str(peer_id),
                {
                    "peer_id": peer_id,
                    "addresses": [str(conn.address)],
                    "sources": ["inbound"],
                    "state": "connected",
                    "address": str(conn.address),
                    "metadata": {},
                },
            )
        return sorted(
            rows.values(), key=lambda row: (row["state"] != "connected", str(row["peer_id"]))
        )

    def _identity_id(self) -> PeerId | None:
        return self._identity.peer_id if self._identity else None

    # -- plugins -------------------------------------------------------------------------------

    def _context_for(self, name: str, plugin_config: BaseModel) -> DiscoveryContext[Any]:
        state_dir = self.config.state_dir / "plugins" / name
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.health[name] = PluginHealth()

        def report(ok: bool, message: str) -> None:
            self._set_health(name, ok, message)

        return DiscoveryContext(
            plugin_name=name,
            config=plugin_config,
            node=self.info,
            state_dir=state_dir,
            log=logging.getLogger(f"exo_discovery.plugin.{name}"),
            report_health=report,
        )

    async def _supervise(self, context: DiscoveryContext[Any]) -> None:
        await supervise(
            self.host,
            context,
            on_set=self._on_set,
            on_error=self._on_plugin_error,
            on_recovered=lambda name: self._set_health(name, True, "recovered"),
            restart_max=self.config.plugin_restart_max,
        )

    def _on_set(self, plugin: str, candidates: frozenset[PeerCandidate]) -> None:
        self.table.replace(plugin, candidates)
        self._table_changed()

    def _on_plugin_error(self, plugin: str, message: str) -> None:
        self.table.plugin_failed(plugin, self.config.peer_ttl)
        self._set_health(plugin, False, message)

    def _set_health(self, plugin: str, ok: bool, message: str) -> None:
        health = self.health.setdefault(plugin, PluginHealth())
        if health.ok != ok:
            kind = "plugin_recovered" if ok else "plugin_error"
            self._publish(NodeEvent(event=kind, plugin=plugin, error=None if ok else message))
            health.since = time.time()
        health.ok, health.message = ok, message

    def _table_changed(self) -> None:
        merged = self.table.merged()
        me = self._identity_id()
        now = {key: peer.snapshot() for key, peer in merged.items() if peer.peer_id != me}
        for key, snap in now.items():
            if self._known.get(key) != snap:
                self._publish(_peer_event("peer_discovered", snap))
        for key in self._known.keys() - now.keys():
            lost = self._known[key]
            if lost[0] is None and all(self.table.alias(a) for a in lost[1]):
                continue  # not lost: a handshake told us who it is, and it merged into that peer
            self._publish(_peer_event("peer_lost", lost))
        self._known = now
        self._wake.set()

    async def _housekeeping(self) -> None:
        while True:
            await anyio.sleep(1.0)
            if self.table.expire():
                self._table_changed()

    # -- connections ---------------------------------------------------------------------------

    def report_connection(
        self, peer_id: PeerId, connected: bool, address: Address | None = None, reason: str = ""
    ) -> None:
        """For a host program with its own transport: tell the node a peer came or went."""
        if connected:
            self._on_up(peer_id, address)
        else:
            self._on_down(peer_id, reason or "reported by host")

    def _sources(self, peer_id: PeerId) -> frozenset[str]:
        peer = self.table.merged().get(str(peer_id))
        return frozenset(peer.sources) if peer else frozenset({"inbound"})

    def _on_up(self, peer_id: PeerId, address: Address | None) -> None:
        sources = self._sources(peer_id)
        self._sources_of[peer_id] = sources
        log.info("connected to %s at %s", peer_id, address)
        self._publish(
            NodeEvent(
                event="connected",
                peer_id=peer_id,
                address=str(address) if address else None,
                sources=sorted(sources),
            )
        )
        self._dispatch(
            ConnectionEvent(
                peer_id=peer_id, state=ConnectionState.CONNECTED, address=address, sources=sources
            )
        )
        self._announce()

    def _on_down(self, peer_id: PeerId, reason: str) -> None:
        sources = self._sources_of.pop(peer_id, self._sources(peer_id))
        log.info("disconnected from %s: %s", peer_id, reason)
        self._publish(
            NodeEvent(event="disconnected", peer_id=peer_id, reason=reason, sources=sorted(sources))
        )
        self._dispatch(
            ConnectionEvent(
                peer_id=peer_id,
                state=ConnectionState.DISCONNECTED,
                address=None,
                sources=sources,
                reason=reason,
            )
        )
        state = self._dial_states.get(str(peer_id))
        if state is not None:
            state.next_at = 0.0  # try again at once, then back off
        self._exchange_heard.pop(peer_id, None)
        if self._exchanged.update(peer_id, []):
            self._replace_exchanged()
        self._announce()
        self._wake.set()

    # -- peer exchange -------------------------------------------------------------------------

    def _announce(self) -> None:
        """Tell every connected peer whom we are connected to (coalesced: one send per burst)."""
        if not self.config.exchange or self._tg is None or self._announcing:
            return
        self._announcing = True

        async def send() -> None:
            # coalesce a burst of connection changes (a mesh forming) into one announcement
            await anyio.sleep(random.uniform(*ANNOUNCE_DELAY))
            self._announcing = False
            if self.connections is not None:
                current = [(pid, conn.address) for pid, conn in self.connections.current.items()]
                await self.connections.broadcast(exchange.announcement(current))

        self._tg.start_soon(send)

    def _on_message(self, conn: Connection, message: dict[str, Any]) -> None:
        if message["type"] != "peers" or not self.config.exchange:
            return
        if self._exchange_heard.get(conn.peer_id) == message.get("peers"):
            return  # the same list again: nothing to parse, nothing changed
        self._exchange_heard[conn.peer_id] = message.get("peers")
        candidates = exchange.read(
            message, sender=conn.peer_id, sender_address=conn.address, me=self.peer_id
        )
        if self._exchanged.update(conn.peer_id, candidates):
            self._replace_exchanged()

    def _replace_exchanged(self) -> None:
        self.table.replace(exchange.SOURCE, self._exchanged.candidates())
        self._table_changed()

    def _on_identified(self, address: Address, peer_id: PeerId) -> None:
        if self.table.learn(address, peer_id):
            self._table_changed()

    def _dispatch(self, event: ConnectionEvent) -> None:
        for name, context in self._contexts.items():
            if self.host.implements(name, "on_connection") and self._tg is not None:
                self._tg.start_soon(self._call_on_connection, name, context, event)

    async def _call_on_connection(
        self, name: str, context: DiscoveryContext[Any], event: ConnectionEvent
    ) -> None:
        try:
            result = self.host.call(name, "on_connection", event=event, context=context)
            if inspect.isawaitable(result):
                with anyio.fail_after(ON_CONNECTION_TIMEOUT):
                    await result
        except Exception as exc:  # noqa: BLE001 - a plugin's handler never breaks the node
            log.error("plugin %r on_connection failed: %s: %s", name, type(exc).__name__, exc)

    async def _dial_loop(self) -> None:
        assert self._tg is not None
        while True:
            now = time.monotonic()
            soonest = 1.0
            merged = self.table.merged()
            connected = self.connections.current if self.connections else {}
            for key in self._dial_states.keys() - merged.keys():
                if not self._dial_states[key].busy:
                    del self._dial_states[key]
            for key, peer in merged.items():
                if peer.peer_id is not None and (
                    peer.peer_id in connected or peer.peer_id == self._identity_id()
                ):
                    continue
                state = self._dial_states.get(key)
                if state is None:
                    backoff = Backoff(REDIAL_INITIAL, self.config.redial_max)
                    state = self._dial_states[key] = _DialState(backoff)
                    if self._dials_second(peer):
                        state.next_at = now + EXCHANGE_SECOND_DIAL  # let the peer dial first
                if state.busy or state.is_self:
                    continue
                if state.next_at > now:
                    soonest = min(soonest, state.next_at - now)
                    continue
                state.busy = True
                self._tg.start_soon(self._dial, peer, state)
            with anyio.move_on_after(soonest):
                await self._wake.wait()
            self._wake = anyio.Event()

    def _dials_second(self, peer: Peer) -> bool:
        """Peers that heard of each other by exchange both know it: the lower peer id dials, the
        other only if no connection came in the meantime, so a forming mesh makes no duplicates."""
        return (
            peer.sources == {exchange.SOURCE}
            and peer.peer_id is not None
            and (str(peer.peer_id) < str(self.peer_id))
        )

    async def _dial(self, peer: Peer, state: _DialState) -> None:
        assert self.connections is not None
        try:
            for address in by_preference(peer.addresses, self._local):
                try:
                    peer_id = await self.connections.dial(address, peer.peer_id, CONNECT_TIMEOUT)
                except SelfConnection:
                    state.is_self = True
                    self.table.learn(address, self.peer_id)
                    self._table_changed()
                    return
                except (
                    HandshakeError,
                    TimeoutError,
                    OSError,
                    anyio.EndOfStream,
                    anyio.IncompleteRead,
                    anyio.BrokenResourceError,
                ) as exc:
                    level = logging.WARNING if isinstance(exc, HandshakeError) else logging.DEBUG
                    log.log(level, "dial %s failed: %s", address, exc or type(exc).__name__)
                    continue
                except Exception as exc:  # noqa: BLE001 - one bad address never stops the node
                    log.warning(
                        "dial %s failed unexpectedly: %s: %s", address, type(exc).__name__, exc
                    )
                    continue
                log.debug("dialed %s: it is %s", address, peer_id)
                state.backoff.reset()
                state.next_at = time.monotonic() + state.backoff.next()
                return
            state.next_at = time.monotonic() + state.backoff.next()
        finally:
            state.busy = False
            self._wake.set()

    def _publish(self, event: NodeEvent) -> None:
        self._hub.publish(event)


def _peer_event(kind: Literal["peer_discovered", "peer_lost"], snapshot: PeerSnapshot) -> NodeEvent:
    peer_id, addresses, sources = snapshot
    return NodeEvent(
        event=kind, peer_id=peer_id, addresses=[str(a) for a in addresses], sources=sorted(sources)
    )
