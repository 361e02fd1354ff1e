"""The plugins as the node runs them: each one's context, supervision, health and on_connection.

Each plugin is a source of the peer table: its sets go into the table under its name, and when it
fails its last set is kept for the peer TTL. A plugin's state (``starting``, ``ok``, ``idle``,
``failing``, each with a message) is reported by the plugin itself (``context.report_health``,
``context.report_idle``) and by its supervisor; turning failing or good again is an event.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel

from .config import NodeConfig
from .events import NodeEvent
from .models import ConnectionEvent, DiscoveryContext, NodeInfo
from .peertable import PeerTable
from .plugins import PluginHost
from .status import PluginState, PluginStatus
from .supervisor import supervise
from .text import encodable, logger

log = logger("exo_discovery.node")

ON_CONNECTION_TIMEOUT = 5.0


@dataclass
class PluginHealth:
    state: PluginState = "starting"
    message: str = "starting"
    since: float = field(default_factory=time.time)


class PluginSources:
    """The loaded plugins of one node: started with :meth:`start`, told of connections."""

    def __init__(
        self,
        host: PluginHost,
        configs: Mapping[str, BaseModel],
        publish: Callable[[NodeEvent], None],
    ) -> None:
        self._host = host
        self._configs = dict(configs)
        self._publish = publish
        self._health: dict[str, PluginHealth] = {}
        self._contexts: dict[str, DiscoveryContext[Any]] = {}

    def start(self, tg: TaskGroup, node: NodeInfo, config: NodeConfig, table: PeerTable) -> None:
        """Run every plugin's ``discover_peers`` under a supervisor, its sets into ``table``."""

        def on_set(plugin: str, candidates: Any) -> None:
            table.replace(plugin, candidates)

        failed = anyio.Event()  # a failed plugin's set has a deadline now

        def on_error(plugin: str, message: str) -> None:
            table.source_failed(plugin, config.peer_ttl)
            failed.set()
            self.report(plugin, "failing", message)

        def on_recovered(plugin: str) -> None:
            self.report(plugin, "ok", "recovered")

        async def run(context: DiscoveryContext[Any]) -> None:
            await supervise(
                self._host,
                context,
                on_set=on_set,
                on_error=on_error,
                on_recovered=on_recovered,
                restart_max=config.plugin_restart_max,
            )

        async def expire_failed() -> None:
            """Drop a failed plugin's set when its TTL runs out; asleep while none is failing."""
            nonlocal failed
            while True:
                deadline = table.next_expiry()
                wait = math.inf if deadline is None else deadline - time.monotonic()
                with anyio.move_on_after(wait):
                    await failed.wait()
                failed = anyio.Event()
                table.expire()

        tg.start_soon(expire_failed)
        for name, plugin_config in self._configs.items():
            context = self._contexts[name] = self._context(
                name, plugin_config, node, config.state_dir
            )
            tg.start_soon(run, context)

    def _context(
        self, name: str, plugin_config: BaseModel, node: NodeInfo, state_dir: Path
    ) -> DiscoveryContext[Any]:
        plugin_dir = state_dir / "plugins" / name
        plugin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._health[name] = PluginHealth()

        def report(ok: bool, message: str) -> None:
            self.report(name, "ok" if ok else "failing", message)

        def report_idle(message: str) -> None:
            self.report(name, "idle", message)

        plugin_log = logger(f"exo_discovery.plugin.{name}")
        return DiscoveryContext(
            name, plugin_config, node, plugin_dir, plugin_log, report, report_idle=report_idle
        )

    def report(self, plugin: str, state: PluginState, message: str) -> None:
        message = encodable(message)  # it may quote a server: the status JSON must stay valid
        health = self._health.setdefault(plugin, PluginHealth())
        failing, was_failing = state == "failing", health.state == "failing"
        if failing != was_failing:
            kind = "plugin_error" if failing else "plugin_recovered"
            self._publish(NodeEvent(event=kind, plugin=plugin, error=message if failing else None))
        if state != health.state:
            health.since = time.time()
        health.state, health.message = state, message

    def statuses(self) -> list[PluginStatus]:
        """Every installed plugin, with its health while it runs."""
        rows = []
        for info in self._host.infos_sorted():
            health = self._health.get(info.name)  # none for a plugin that is not running
            rows.append(
                PluginStatus(
                    **info.as_dict(),
                    healthy=health.state != "failing" if health else None,
                    health=health.message if health else None,
                    state=health.state if health else None,
                )
            )
        return rows

    # -- on_connection -----------------------------------------------------------------------

    def notify(self, tg: TaskGroup, event: ConnectionEvent) -> None:
        """Each plugin's ``on_connection``, in its own task so none waits for another."""
        for name, context in self._contexts.items():
            if self._host.implements(name, "on_connection"):
                tg.start_soon(self._call_on_connection, name, context, event)

    async def _call_on_connection(
        self, name: str, context: DiscoveryContext[Any], event: ConnectionEvent
    ) -> None:
        try:
            result = self._host.call(name, "on_connection", event=event, context=context)
            if inspect.isawaitable(result):
                with anyio.fail_after(ON_CONNECTION_TIMEOUT):
                    await result
        except Exception as exc:  # noqa: BLE001 - a plugin's handler never breaks the node
            log.error("plugin %r on_connection failed: %s: %s", name, type(exc).__name__, exc)
