"""A test plugin object that yields fixed candidates and records what ``on_connection`` hears."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio

from exo_discovery_core import ConnectionEvent, PeerCandidate, hookimpl


class Static:
    """Yields fixed candidates, then stays; records its on_connection calls."""

    def __init__(self, *candidates: PeerCandidate) -> None:
        self.candidates = list(candidates)
        self.connections: list[ConnectionEvent] = []

    @hookimpl
    def discover_peers(self) -> AsyncIterator[list[PeerCandidate]]:
        async def stream() -> AsyncIterator[list[PeerCandidate]]:
            yield self.candidates
            await anyio.sleep_forever()

        return stream()

    @hookimpl
    async def on_connection(self, event: ConnectionEvent) -> None:
        self.connections.append(event)
