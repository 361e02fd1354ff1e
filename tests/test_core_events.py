"""The event hub: a slow subscriber gets every event or a ``lagged`` marker counting the gap."""

from __future__ import annotations

import anyio
import pytest

from exo_discovery_core.events import EventHub, NodeEvent


def event(i: int) -> NodeEvent:
    return NodeEvent(event="connected", peer_id=f"p{i}")


def drain(stream: anyio.abc.ObjectReceiveStream[NodeEvent]) -> list[str]:
    seen = []
    while True:
        try:
            item = stream.receive_nowait()  # type: ignore[attr-defined]
        except anyio.WouldBlock:
            return seen
        seen.append(f"lagged:{item.count}" if item.event == "lagged" else str(item.peer_id))


@pytest.mark.anyio
async def test_a_slow_subscriber_is_told_how_many_it_missed_and_where() -> None:
    hub = EventHub(buffer=3)
    async with hub.subscribe() as slow, hub.subscribe() as fast:
        for i in range(10):
            hub.publish(event(i))
            if i < 9:
                assert len(drain(fast)) == 1
        assert drain(slow) == ["p0", "p1", "p2", "lagged:7"]
        hub.publish(event(10))
        hub.publish(event(11))
        assert drain(slow) == ["p10", "p11"]
        assert drain(fast) == ["p9", "p10", "p11"]
        for i in range(12, 17):  # a second gap is a second marker
            hub.publish(event(i))
            assert len(drain(fast)) == 1
        assert drain(slow) == ["p12", "p13", "p14", "lagged:2"]


@pytest.mark.anyio
async def test_a_marker_read_before_the_gap_ends_has_its_final_count() -> None:
    hub = EventHub(buffer=2)
    async with hub.subscribe() as stream:
        for i in range(5):
            hub.publish(event(i))
        assert drain(stream) == ["p0", "p1", "lagged:3"]
        hub.publish(event(5))  # fits: the gap is closed, the marker read above stays right
        for i in range(6, 9):
            hub.publish(event(i))
        assert drain(stream) == ["p5", "p6", "lagged:2"]
