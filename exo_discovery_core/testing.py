"""Helpers for testing a plugin against the real core: its hooks run as the node runs them.

``peer_sets`` drives a plugin's ``discover_peers`` and returns what it yielded (``discovering``
hands over the iterator itself, for tests that act between sets); ``run_node`` starts
a real in-process node with the plugin registered, and ``next_event`` waits for what it reports.
They take the plugin object itself (a module or instance), so a test needs no entry point.
"""

from __future__ import annotations

import ipaddress
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from pydantic import BaseModel

from .config import ConfigSource
from .events import NodeEvent
from .identity import Identity
from .ip import LocalNetworks
from .models import Address, DiscoveryContext, NodeInfo, PeerCandidate
from .node import Node
from .plugins import PluginHost
from .supervisor import running
from .text import logger


def node_info(
    *, port: int = 52417, namespace: str = "test", interfaces: Iterable[str] | None = None
) -> NodeInfo:
    """The node a test's plugin sees: a new peer id, listening on 127.0.0.1 at ``port``.

    ``interfaces`` are the addresses this host's interfaces have as far as the plugin can tell
    (``"100.64.0.1"`` or ``"10.0.0.5/24"``); None means the real ones, ``()`` none at all.
    """
    local = LocalNetworks()
    if interfaces is not None:
        given = [ipaddress.ip_interface(text) for text in interfaces]
        local = LocalNetworks(read=lambda: given)
    return NodeInfo(
        peer_id=Identity.generate().peer_id,
        namespace=namespace,
        port=port,
        listen_addresses=(Address(host="127.0.0.1", port=port),),
        local=local,
    )


def make_context(
    plugin: object,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    name: str = "plugin",
    node: NodeInfo | None = None,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    report_health: Callable[[bool, str], None] | None = None,
    report_idle: Callable[[str], None] | None = None,
) -> DiscoveryContext[Any]:
    """The context the node would give ``plugin``, with ``config`` validated by its own model."""
    host = PluginHost()
    host.register(name, plugin)
    if isinstance(config, BaseModel):
        model_config: BaseModel = config
    else:
        source = ConfigSource(env=dict(env or {}), flags=dict(flags or {}))
        model_config = source.plugin_config_from(name, host.config_model(name), dict(config or {}))
    if node is None:
        node = node_info()
    return DiscoveryContext(
        plugin_name=name,
        config=model_config,
        node=node,
        state_dir=state_dir or Path(tempfile.mkdtemp(prefix=f"exo-{name}-")),
        log=logger(f"exo_discovery.plugin.{name}"),
        report_health=report_health or (lambda ok, message: None),
        report_idle=report_idle or (lambda message: None),
    )


@asynccontextmanager
async def discovering(
    plugin: object,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    context: DiscoveryContext[Any] | None = None,
    **context_kwargs: Any,
) -> AsyncIterator[AsyncIterator[Any]]:
    """``plugin``'s peer-set iterator, run as the node runs it (background tasks included), for
    tests that act between sets: ``async with discovering(plugin, cfg) as sets: await anext(sets)``.
    The iterator is closed and the background tasks cancelled on exit; an idle plugin's ends at
    once."""
    ctx = context or make_context(plugin, config, **context_kwargs)
    host = PluginHost()
    host.register(ctx.plugin_name, plugin)
    async with running(host, ctx) as stream:
        yield _nothing() if stream is None else stream


class Collected:
    """Every set a plugin yielded so far, in order; ``wait_for(n)`` until the n-th came."""

    def __init__(self) -> None:
        self.items: list[frozenset[PeerCandidate]] = []
        self._changed = anyio.Event()

    def add(self, item: Any) -> None:
        self.items.append(frozenset(item))
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, count: int, timeout: float = 10.0) -> frozenset[PeerCandidate]:
        """The ``count``-th set (1-based), once it came; TimeoutError if it does not."""
        with anyio.fail_after(timeout):
            while len(self.items) < count:
                await self._changed.wait()
        return self.items[count - 1]


@asynccontextmanager
async def collecting(
    plugin: object,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    context: DiscoveryContext[Any] | None = None,
    **context_kwargs: Any,
) -> AsyncIterator[Collected]:
    """``plugin`` driven as the node drives it, without pause, every set kept: for tests that
    change the source while the plugin keeps polling (``discovering`` polls only on demand)."""
    collected = Collected()
    async with (
        discovering(plugin, config, context=context, **context_kwargs) as stream,
        anyio.create_task_group() as group,
    ):

        async def drive() -> None:
            async for item in stream:
                collected.add(item)

        group.start_soon(drive)
        try:
            yield collected
        finally:
            group.cancel_scope.cancel()


async def _nothing() -> AsyncIterator[Any]:
    """What an idle plugin (discover_peers returned None) yields: no sets at all."""
    return
    yield


async def peer_sets(
    plugin: object,
    config: Mapping[str, Any] | BaseModel | None = None,
    *,
    count: int = 1,
    timeout: float = 10.0,
    context: DiscoveryContext[Any] | None = None,
    **context_kwargs: Any,
) -> list[frozenset[PeerCandidate]]:
    """The first ``count`` peer sets ``plugin`` yields; TimeoutError if they do not come in time.

    The iterator is closed afterwards, as the node closes it on stop, so cleanup code runs.
    """
    sets: list[frozenset[PeerCandidate]] = []
    with anyio.fail_after(timeout):
        async with discovering(plugin, config, context=context, **context_kwargs) as stream:
            async for item in stream:
                sets.append(frozenset(item))
                if len(sets) >= count:
                    break
    return sets


@asynccontextmanager
async def run_node(
    plugins: Mapping[str, object] | None = None,
    *,
    node: Mapping[str, Any] | None = None,
    plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
    state_dir: Path | None = None,
    identity: Identity | None = None,
) -> AsyncIterator[Node]:
    """A real node in this process on a free loopback port, with ``plugins`` registered by name.

    ``node`` holds ``[node]`` settings (e.g. ``{"namespace": "lab"}``), ``plugin_config`` the
    ``[plugins.<name>]`` tables; ``identity`` is its key (default: a new one in its state dir).
    No installed entry point is loaded.
    """
    table = {"port": 0, "listen_host": "127.0.0.1", **(node or {})}
    table.setdefault("state_dir", str(state_dir or tempfile.mkdtemp(prefix="exo-node-")))
    source = ConfigSource(file_data={"node": table, "plugins": dict(plugin_config or {})}, env={})
    config = source.node_config()
    new = Node(config, source=source, plugins=plugins, entry_points=False, identity=identity)
    async with new:
        yield new


async def next_event(
    events: MemoryObjectReceiveStream[NodeEvent], kind: str, timeout: float = 10.0, **match: Any
) -> NodeEvent:
    """The next event of ``kind`` whose fields equal ``match``; TimeoutError if none comes."""
    with anyio.fail_after(timeout):
        async for event in events:
            if event.event == kind and all(getattr(event, k) == v for k, v in match.items()):
                return event
    raise EOFError("the node stopped before the event came")
