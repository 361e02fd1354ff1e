"""What the node tells its host program and the CLI: one flat event type, one JSON line each."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("exo_discovery.node")

EventKind = Literal[
    "started",
    "peer_discovered",
    "peer_lost",
    "connected",
    "disconnected",
    "plugin_error",
    "plugin_recovered",
    "lagged",
    "stopped",
]


class NodeEvent(BaseModel):
    """A change in the node: a peer found or lost, a connection made or lost, a plugin's health."""

    model_config = ConfigDict(defer_build=True)  # built on first use, not at CLI start-up

    event: EventKind
    time: float = Field(default_factory=time.time)
    peer_id: str | None = None
    addresses: list[str] = Field(default_factory=list)
    sources: list[str] = Field(default_factory=list)
    address: str | None = None
    reason: str | None = None
    plugin: str | None = None
    error: str | None = None
    port: int | None = None
    namespace: str | None = None
    count: int | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = self.model_dump(exclude_none=True)
        return json.dumps(data, separators=(",", ":"))


class EventHub:
    """Fans events out to subscribers. One that falls ``buffer`` events behind loses the next
    ones, but never silently: its stream then says ``lagged`` with how many it missed (one
    ``lagged`` per gap, placed where the gap is), so a host program knows to re-read the table.
    """

    def __init__(self, buffer: int = 10_000, history: int = 1_000) -> None:
        self._buffer = buffer
        self._subscribers: list[MemoryObjectSendStream[NodeEvent]] = []
        self._gaps: dict[MemoryObjectSendStream[NodeEvent], NodeEvent] = {}
        self._history: deque[NodeEvent] = deque(maxlen=history)

    def publish(self, event: NodeEvent) -> None:
        self._history.append(event)
        for subscriber in list(self._subscribers):
            try:
                self._deliver(subscriber, event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(subscriber)
                self._gaps.pop(subscriber, None)

    def _deliver(self, subscriber: MemoryObjectSendStream[NodeEvent], event: NodeEvent) -> None:
        """Queue ``event``, or count it in the subscriber's open gap.

        Each stream has one slot more than ``buffer``, kept for the ``lagged`` marker: a full
        stream gets the marker in that slot, and while it is still full the marker's count
        grows. The first event that fits again closes the gap (the marker is final by then:
        it was queued before that event, so it cannot have been read with a wrong count).
        """
        if subscriber.statistics().current_buffer_used < self._buffer:
            subscriber.send_nowait(event)
            self._gaps.pop(subscriber, None)
            return
        gap = self._gaps.get(subscriber)
        if gap is None:
            gap = self._gaps[subscriber] = NodeEvent(event="lagged", count=0)
            subscriber.send_nowait(gap)  # the reserved slot
            log.warning("an event subscriber is too slow; its stream says 'lagged'")
        assert gap.count is not None
        gap.count += 1

    @asynccontextmanager
    async def subscribe(
        self, replay: bool = False
    ) -> AsyncIterator[MemoryObjectReceiveStream[NodeEvent]]:
        """Events from now on; with ``replay``, the last 1,000 before them first."""
        send, receive = anyio.create_memory_object_stream[NodeEvent](self._buffer + 1)
        if replay:
            for event in self._history:
                self._deliver(send, event)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            self._gaps.pop(send, None)
            send.close()

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
        self._gaps.clear()
