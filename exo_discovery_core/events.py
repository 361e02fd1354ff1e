"""What the node tells its host program and the CLI: one flat event type, one JSON line each.

The kinds (each documented in the README): ``started`` and ``stopped``; ``peer_discovered`` once
per peer, ``peer_identified`` when a handshake tells the id of a peer known only by its
addresses, ``peer_updated`` when a known peer's addresses or sources change, ``peer_lost``;
``connected`` and ``disconnected``; ``path_changed`` when a connected peer moved to a better
path (it never went down); ``plugin_error`` and ``plugin_recovered``; ``lagged`` for a
subscriber that missed events. Connection events carry the link class of the address in use
(``link``) and the round trip measured to it (``rtt_ms``). Fields that do not apply are left out
of the JSON, so no event carries an empty list.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel, ConfigDict, Field

from .text import logger

if TYPE_CHECKING:
    from .models import ConnectionEvent
    from .peertable import Peer, TableDiff

log = logger("exo_discovery.node")

EventKind = Literal[
    "started",
    "peer_discovered",
    "peer_identified",
    "peer_updated",
    "peer_lost",
    "connected",
    "disconnected",
    "path_changed",
    "plugin_error",
    "plugin_recovered",
    "duplicate_identity",
    "lagged",
    "stopped",
]


class NodeEvent(BaseModel):
    """A change in the node: a peer found or lost, a connection made or lost, a plugin's health."""

    model_config = ConfigDict(defer_build=True)  # built on first use, not at CLI start-up

    event: EventKind
    time: float = Field(default_factory=time.time)
    peer_id: str | None = None
    addresses: list[str] | None = None
    sources: list[str] | None = None
    address: str | None = None
    link: str | None = None  # the link class of ``address``: loopback, thunderbolt, ethernet...
    rtt_ms: float | None = None  # the round trip measured to ``address``
    reason: str | None = None
    plugin: str | None = None
    error: str | None = None
    port: int | None = None
    namespace: str | None = None
    count: int | None = None
    meta: dict[str, str] | None = None

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
        # kept as JSON, read back only for a replay: 0.3 KiB an event instead of the model's
        # 1.6 KiB, so a full history costs a long-running node 0.3 MiB, not 1.6
        self._history: deque[str] = deque(maxlen=history)

    def publish(self, event: NodeEvent) -> None:
        self._history.append(event.model_dump_json(exclude_none=True))
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
            for kept in self._history:
                self._deliver(send, NodeEvent.model_validate_json(kept))
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


def peer_events(diff: TableDiff) -> list[NodeEvent]:
    """The events one change of the peer table makes, one per entry it touched."""
    kinds: list[tuple[EventKind, Iterable[Peer]]] = [
        ("peer_discovered", diff.added),
        ("peer_identified", [found.now for found in diff.identified]),
        ("peer_updated", diff.changed),
        ("peer_lost", diff.removed),
    ]
    return [
        NodeEvent(
            event=kind,
            peer_id=peer.peer_id,
            addresses=[str(a) for a in peer.addresses],
            sources=sorted(peer.sources),
            meta=dict(peer.meta) if peer.meta is not None else None,
        )
        for kind, peers in kinds
        for peer in peers
    ]


def connection_event(
    change: ConnectionEvent,
    peer: Peer | None,
    link: str | None = None,
    rtt_ms: float | None = None,
    kind: EventKind | None = None,
) -> NodeEvent:
    """``connected`` (with the address in use, its link class and round trip) or
    ``disconnected`` (with the reason), both with the peer's addresses as the table knows them;
    ``kind`` ``path_changed`` for a connected peer's move to another address."""
    addresses = [str(a) for a in peer.addresses] if peer else []
    if change.address is not None and str(change.address) not in addresses:
        addresses.insert(0, str(change.address))
    return NodeEvent(
        event=kind or ("connected" if change.connected else "disconnected"),
        peer_id=change.peer_id,
        address=str(change.address) if change.address else None,
        link=link if change.connected else None,
        rtt_ms=rtt_ms if change.connected else None,
        addresses=addresses or None,
        sources=sorted(change.sources),
        reason=None if change.connected else change.reason,
        meta=dict(change.meta) if change.connected else None,
    )
