"""A test plugin object that yields candidates (changed with ``set``) and records what
``on_connection`` hears."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from exo_discovery_core import ConnectionEvent, PeerCandidate, hookimpl


class Static:
    """Yields its candidates, then again each time :meth:`set` changes them; records its
    on_connection calls."""

    def __init__(self, *candidates: PeerCandidate) -> None:
        self.candidates = list(candidates)
        self.connections: list[ConnectionEvent] = []
        self._changed: anyio.Event | None = None
        self._heard: anyio.Event | None = None

    def set(self, *candidates: PeerCandidate) -> None:
        """A new set (call it in the node's event loop): the node gets it at once."""
        self.candidates = list(candidates)
        if self._changed is not None:
            self._changed.set()

    async def wait_connections(self, count: int, timeout: float = 5.0) -> list[ConnectionEvent]:
        """The first ``count`` on_connection events, once they have come (they run in tasks)."""
        with anyio.fail_after(timeout):
            while len(self.connections) < count:
                self._heard = anyio.Event()
                await self._heard.wait()
        return self.connections[:count]

    @hookimpl
    def discover_peers(self) -> AsyncIterator[list[PeerCandidate]]:
        async def stream() -> AsyncIterator[list[PeerCandidate]]:
            while True:
                self._changed = anyio.Event()
                yield list(self.candidates)
                await self._changed.wait()

        return stream()

    @hookimpl
    async def on_connection(self, event: ConnectionEvent) -> None:
        self.connections.append(event)
        if self._heard is not None:
            self._heard.set()
