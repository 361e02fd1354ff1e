"""The node: its settings, its start and stop, and what it tells its host.

    async with Node(NodeConfig(namespace="lab")) as node, node.events() as events:
        async for event in events:
            print(event.to_json())

While it runs, its state is one :class:`~exo_discovery_core.pipeline.Pipeline` made at the start
(sources -> peer table -> dialer -> connections). A host program with its own transport (exo)
sets ``connect = false`` and calls :meth:`Node.report_connection` itself.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from pydantic import BaseModel

from . import status, transport
from .config import ConfigSource, NodeConfig
from .connections import ConnectionManager
from .events import EventHub, NodeEvent
from .handshake import PROTOCOL
from .identity import Identity, PeerId
from .models import Address, NodeInfo
from .peertable import PeerTable
from .pipeline import Pipeline
from .plugins import PluginHost, installed_entry_points
from .records import LocalRecord, PeerRecord
from .sources import PluginSources
from .status import PeerView
from .text import logger

log = logger("exo_discovery.node")


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
        self._hub = EventHub()
        self._stack = AsyncExitStack()
        self._started: Pipeline | None = None

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
        source = ConfigSource.from_settings(node, plugins or {}, use_file=use_file, use_env=use_env)
        config = source.node_config()
        built = cls(config, source=source, plugins=register, entry_points=entry_points,
                    identity=identity)  # fmt: skip
        built.plugin_configs()  # every plugin's settings are checked here, not at start
        return built

    @property
    def _run(self) -> Pipeline:
        if self._started is None:
            raise RuntimeError("the node is not running (use it as `async with node:`)")
        return self._started

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
            self.source.check_flags_of(model for _, model in models)
            self._plugin_configs = {
                name: self.source.plugin_config(name, model) for name, model in models[1:]
            }
        return self._plugin_configs

    async def __aenter__(self) -> Node:
        plugins = PluginSources(self.host, self.plugin_configs(), self._hub.publish)
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = self._identity = self._identity or Identity.load_or_create(config.state_dir)
        stack = self._stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            listener = await transport.listen(config.listen_host or None, config.port)
            stack.push_async_callback(listener.aclose)
            port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
            record = LocalRecord(
                identity,
                config.state_dir,
                protocol=PROTOCOL,
                addresses=config.advertised(port),
                meta=config.meta,
            )
            tg = await stack.enter_async_context(anyio.create_task_group())
            run = Pipeline(config, identity, port, tg, plugins, self._hub.publish, record)
            self._started = run
            stack.push_async_callback(self._shutdown, run)
            run.serve(listener)
            await status.serve(config.state_dir, self.status, stack, tg)
            run.plugins.start(tg, self.info, config, run.table)
            if config.connect or config.verify:  # connect = false: it verifies, then closes
                tg.start_soon(run.dialer.run, tg)
            tg.start_soon(run.exchange.run, tg)
        except BaseException:
            self._started = None
            await stack.__aexit__(*sys.exc_info())
            raise
        log.info(
            "node %s listening on port %d (namespace %r)", self.peer_id, port, config.namespace
        )
        listening = [str(a) for a in self.info.listen_addresses]
        self._hub.publish(
            NodeEvent(event="started", peer_id=self.peer_id, port=port,
                      namespace=config.namespace, addresses=listening)
        )  # fmt: skip
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._stack.__aexit__(*exc_info)

    async def _shutdown(self, run: Pipeline) -> None:
        await run.connections.close_all()
        self._hub.publish(NodeEvent(event="stopped", peer_id=run.identity.peer_id))
        self._hub.close()  # every subscriber's stream ends after "stopped"
        run.tg.cancel_scope.cancel()

    @asynccontextmanager
    async def events(
        self, replay: bool = False
    ) -> AsyncIterator[MemoryObjectReceiveStream[NodeEvent]]:
        """Events from now on (``async with node.events() as stream``), also before the start;
        with ``replay``, the node's last 1,000 events first. The stream ends after ``stopped``."""
        async with self._hub.subscribe(replay) as stream:
            yield stream

    # -- what the node knows (from its start on) ---------------------------------------------

    @property
    def peer_id(self) -> PeerId:
        return self._run.identity.peer_id

    @property
    def port(self) -> int:
        return self._run.port

    @property
    def table(self) -> PeerTable:
        return self._run.table

    @property
    def connections(self) -> ConnectionManager:
        return self._run.connections

    @property
    def info(self) -> NodeInfo:
        """Who we are and where we can be reached (``[node] advertise_addresses``, else the
        addresses of the interfaces ``[node] interfaces`` allows), as plugins see it."""
        return self._run.info

    def status(self) -> status.Status:
        """The typed snapshot ``exo-discovery peers`` and the live view show."""
        return status.Status(
            peer_id=self.peer_id,
            namespace=self.config.namespace,
            port=self.port,
            plugins=self._run.plugins.statuses(),
            peers=[view.row() for view in self.peers()],
            duplicate_identity=self._run.identity_conflict,
        )

    def peers(self) -> list[PeerView]:
        """Every peer, typed: ids, addresses with their route class, sources, state, metadata."""
        return self._run.peer_views()

    def set_meta(self, meta: Mapping[str, str]) -> None:
        """Publish new metadata (bounded as ``[node.meta]``): a new signed record with a higher
        sequence number, sent to every connected peer, which each report once
        (``peer_updated`` with the new ``meta``)."""
        self._run.set_meta(dict(meta))

    def meta_of(self, peer_id: PeerId) -> dict[str, str] | None:
        """A peer's metadata, from its newest signed record (None if none is known)."""
        return self._run.meta_of(peer_id)

    @property
    def record(self) -> PeerRecord:
        """This node's own signed record as peers receive it now (``envelope``: its bytes)."""
        return self._run.record.record

    def report_connection(
        self, peer_id: PeerId, connected: bool, address: Address | None = None, reason: str = ""
    ) -> None:
        """For a host program with its own transport: tell the node a peer came or went (a
        report that changes nothing, up twice, is ignored: one event per transition)."""
        self._run.host_reported(peer_id, connected, address, reason or "reported by host")
