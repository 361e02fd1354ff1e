"""Metadata a host publishes: set at start, changed while running (a new signed record); each
connected peer reports the change once. (A discover-only host reading it: test_host_discover_only.)
"""

from __future__ import annotations

import anyio
import pytest

from exo_discovery_core import PeerCandidate
from exo_discovery_core.testing import next_event, run_node
from tests.support.static import Static

pytestmark = pytest.mark.anyio

CHANGED = {"api_port": "52416", "zenoh": "tcp/127.0.0.1:7447"}


async def test_metadata_changed_while_running_is_one_peer_updated_at_each_peer() -> None:
    async with run_node(node={"namespace": "lab", "meta": {"api_port": "52415"}}) as exo:
        plugin = Static(PeerCandidate.at("127.0.0.1", exo.port))
        async with run_node({"static": plugin}, node={"namespace": "lab"}) as peer:
            async with peer.events(replay=True) as events:
                await next_event(events, "connected", peer_id=str(exo.peer_id))
            [view] = peer.peers()
            assert view.meta == {"api_port": "52415"}
            async with peer.events() as events:
                exo.set_meta(CHANGED)
                updated = await next_event(events, "peer_updated", peer_id=str(exo.peer_id))
                assert updated.meta == CHANGED
                more = []
                with anyio.move_on_after(1.5):  # heartbeats and exchanges go on; no second one
                    async for event in events:
                        if event.event == "peer_updated" and event.peer_id == str(exo.peer_id):
                            more.append(event)
                assert more == []
            assert peer.peers()[0].meta == CHANGED
