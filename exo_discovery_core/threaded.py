"""A node on its own thread and event loop, for a host whose own loop may block.

exo embeds the node in its Python process, and that process loads models: its event loop can be
blocked for seconds. A node sharing that loop would miss its heartbeats, and its peers would
(rightly) drop it after ``dead_after``. :class:`NodeThread` runs the node, its plugins and its
hooks on a thread of their own; the host talks to it from its own loop, and events cross over
through a thread-safe queue, so a blocked host delays only its own reading of them:

    async with NodeThread(NodeConfig(namespace="lab")) as node, node.events() as events:
        async for event in events:
            print(event.to_json())

Plugins and ``on_connection`` hooks then run on the node's thread: a hook that touches the host's
objects must hand the work over (``anyio.from_thread``, ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import math
import queue
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .events import NodeEvent
from .identity import PeerId
from .models import Address
from .node import Node
from .status import Status

T = TypeVar("T")
_END = object()


class NodeThread:
    """:class:`Node` (same arguments) on a thread of its own; use as an async context manager."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._make: Callable[[], Node] = lambda: Node(*args, **kwargs)
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None
        self._node: Node | None = None

    async def __aenter__(self) -> NodeThread:
        portal_cm = start_blocking_portal(name="exo-discovery-node")
        self._portal = await anyio.to_thread.run_sync(self._stack.enter_context, portal_cm)
        try:
            # built and entered on its own loop: every anyio object it makes belongs there
            node = await self._in_node(self._make)
            entered: AbstractContextManager[Node] = self._portal.wrap_async_context_manager(node)
            await anyio.to_thread.run_sync(self._stack.enter_context, entered)
        except BaseException:
            await anyio.to_thread.run_sync(self._stack.close)
            raise
        self._node = node
        return self

    @classmethod
    def from_settings(cls, **settings: Any) -> NodeThread:
        """:meth:`Node.from_settings` on a thread of its own: the settings are checked now
        (``ConfigError`` naming the key), the node is built on its own loop when entered."""
        Node.from_settings(**settings)
        thread = cls()
        thread._make = lambda: Node.from_settings(**settings)
        return thread

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._stack.close)

    @property
    def node(self) -> Node:
        """The node itself, for reading what does not change (``peer_id``, ``port``, ``info``);
        call anything else through :meth:`call`."""
        assert self._node is not None, "enter the NodeThread first"
        return self._node

    @property
    def peer_id(self) -> PeerId:
        return self.node.peer_id

    @property
    def port(self) -> int:
        return self.node.port

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the node's loop (the node's own methods are not thread-safe)."""
        return await self._in_node(func, *args)

    async def status(self) -> Status:
        """:meth:`Node.status`, read on the node's loop."""
        return await self.call(self.node.status)

    async def report_connection(
        self, peer_id: PeerId, connected: bool, address: Address | None = None, reason: str = ""
    ) -> None:
        await self.call(self.node.report_connection, peer_id, connected, address, reason)

    @asynccontextmanager
    async def events(
        self, replay: bool = False
    ) -> AsyncIterator[MemoryObjectReceiveStream[NodeEvent]]:
        """Like :meth:`Node.events`, delivered on the caller's loop."""
        assert self._portal is not None, "enter the NodeThread first"
        handoff: queue.SimpleQueue[object] = queue.SimpleQueue()
        pump = self._portal.start_task_soon(self._pump, handoff, replay)
        send, receive = anyio.create_memory_object_stream[NodeEvent](math.inf)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_drain, handoff, send)
                with receive:
                    yield receive
                tg.cancel_scope.cancel()
        finally:
            pump.cancel()
            handoff.put(_END)  # frees the worker thread of a drain that was cancelled

    async def _pump(self, handoff: queue.SimpleQueue[object], replay: bool) -> None:
        """On the node's loop: every event into the queue, never waiting for the host."""
        try:
            async with self.node.events(replay) as stream:
                async for event in stream:
                    handoff.put(event)
        finally:
            handoff.put(_END)

    async def _in_node(self, func: Callable[..., T], *args: Any) -> T:
        assert self._portal is not None
        portal = self._portal
        return await anyio.to_thread.run_sync(lambda: portal.call(func, *args))


async def _drain(
    handoff: queue.SimpleQueue[object], send: MemoryObjectSendStream[NodeEvent]
) -> None:
    """On the host's loop: the queue into the stream the host reads."""
    with send:
        while True:
            item = await anyio.to_thread.run_sync(handoff.get, abandon_on_cancel=True)
            if item is _END:
                return
            assert isinstance(item, NodeEvent)
            send.send_nowait(item)
