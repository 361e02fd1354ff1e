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

    def to_json(self) -> str:
        data: dict[str, Any] = self.model_dump(exclude_none=True)
        return json.dumps(data, separators=(",", ":"))


class EventHub:
    """Fans events out to subscribers; a subscriber that falls 10,000 events behind loses some."""

    def __init__(self, buffer: int = 10_000, history: int = 1_000) -> None:
        self._buffer = buffer
        self._subscribers: list[MemoryObjectSendStream[NodeEvent]] = []
        self._history: deque[NodeEvent] = deque(maxlen=history)

    def publish(self, event: NodeEvent) -> None:
        self._history.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber.send_nowait(event)
            except anyio.WouldBlock:
                log.warning("an event subscriber is too slow; dropped %s", event.event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.remove(subscriber)

    @asynccontextmanager
    async def subscribe(
        self, replay: bool = False
    ) -> AsyncIterator[MemoryObjectReceiveStream[NodeEvent]]:
        """Events from now on; with ``replay``, the last 1,000 before them first."""
        send, receive = anyio.create_memory_object_stream[NodeEvent](
            self._buffer + len(self._history)
        )
        if replay:
            for event in self._history:
                send.send_nowait(event)
        self._subscribers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._subscribers:
                self._subscribers.remove(send)
            send.close()

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.close()
        self._subscribers.clear()
