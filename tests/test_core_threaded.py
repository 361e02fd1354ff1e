"""An embedded node on its own thread: a host that blocks its own loop does not stall it."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import anyio
import pytest

from exo_discovery_core import PeerCandidate
from exo_discovery_core.config import ConfigSource
from exo_discovery_core.testing import next_event
from exo_discovery_core.threaded import NodeThread
from tests.support.nodes import NodeFleet
from tests.support.static import Static

pytestmark = pytest.mark.anyio


def _thread_node(plugins: dict[str, object], **node: Any) -> NodeThread:
    table = {"port": 0, "listen_host": "127.0.0.1", "state_dir": tempfile.mkdtemp(), **node}
    source = ConfigSource(file_data={"node": table}, env={})
    return NodeThread(source.node_config(), source=source, plugins=plugins, entry_points=False)


async def test_a_host_blocking_its_loop_for_5_s_loses_no_peer(nodes: NodeFleet) -> None:
    peer = nodes.start("peer", "--plugins", "", "--listen-host", "127.0.0.1", "--port", "0")
    plugin = Static(PeerCandidate.at("127.0.0.1", peer.port, peer.peer_id))
    async with _thread_node({"static": plugin}) as embedded, embedded.events(replay=True) as events:
        await next_event(events, "connected", timeout=10, peer_id=peer.peer_id)
        peer.wait_for("connected", timeout=10, peer_id=str(embedded.peer_id))
        blocked_at = time.monotonic()
        time.sleep(5.0)  # noqa: ASYNC251 - the host blocks its loop: twice dead_after (2.5 s)
        # the node kept beating meanwhile: the peer, in its own process, saw nothing amiss
        assert peer.count("disconnected") == 0, peer.log_tail()
        assert str(embedded.peer_id) in peer.connected_peers()
        rows = (await embedded.status()).peers
        assert [r.state for r in rows if r.peer_id == peer.peer_id] == ["connected"]
        # and the events that came meanwhile were queued for the host, none of them a loss
        with anyio.move_on_after(0.5):
            async for event in events:
                assert event.event != "disconnected", event
        assert time.monotonic() - blocked_at >= 5.0
    # leaving stops the node's thread and says goodbye like any node
    peer.wait_for("disconnected", timeout=5, peer_id=str(embedded.peer_id))


async def test_events_reach_the_host_loop_and_calls_run_on_the_node_loop() -> None:
    async with _thread_node({}) as a, a.events(replay=True) as a_events:
        started = await next_event(a_events, "started", timeout=5)
        assert started.peer_id == a.peer_id and started.port == a.port
        plugin = Static(PeerCandidate.at("127.0.0.1", a.port, a.peer_id))
        async with _thread_node({"static": plugin}) as b, b.events() as b_events:
            await next_event(b_events, "connected", timeout=10, peer_id=a.peer_id)
            await next_event(a_events, "connected", timeout=10, peer_id=b.peer_id)
            assert await b.call(lambda: sorted(b.node.connections.connected())) == [a.peer_id]
        gone = await next_event(a_events, "disconnected", timeout=5, peer_id=b.peer_id)
        assert gone.reason == "peer closed (shutdown)"
