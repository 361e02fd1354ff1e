"""The host API in-process: typed peer snapshots that report_connection takes back as they are."""

from __future__ import annotations

import anyio
import pytest

from exo_discovery_core import PeerCandidate
from exo_discovery_core.host import Address, PeerAddress, PeerId, PeerView
from exo_discovery_core.links import LinkClass
from exo_discovery_core.testing import next_event, run_node
from tests.support.static import Static

pytestmark = pytest.mark.anyio


async def wait_for_peer(node: object, state: str, timeout: float = 10) -> PeerView:
    with anyio.fail_after(timeout):
        while True:
            views = [v for v in node.peers() if v.state == state]  # type: ignore[attr-defined]
            if views:
                return views[0]
            await anyio.sleep(0.05)


async def test_snapshot_is_typed_with_route_classes() -> None:
    async with run_node() as target:
        candidate = PeerCandidate.at("127.0.0.1", target.port, role="gpu")
        async with run_node({"static": Static(candidate)}) as node, node.events() as events:
            await next_event(events, "connected", peer_id=str(target.peer_id))
            [view] = node.peers()
            assert isinstance(view.peer_id, PeerId) and view.peer_id == target.peer_id
            assert view.addresses == (
                PeerAddress(
                    Address(host="127.0.0.1", port=target.port), "loopback", LinkClass.LOOPBACK
                ),
            )
            assert view.state == "connected"
            assert view.address == Address(host="127.0.0.1", port=target.port)
            assert view.link is LinkClass.LOOPBACK and view.rtt is not None and view.rtt > 0
            assert view.sources == frozenset({"static"})
            assert view.metadata == {"role": "gpu"}
            assert view.rtt is not None and 0 < view.rtt < 3  # the TCP connect of our dial
            row = node.status().peers[0]  # the CLI's row is the same peer, as text
            assert row.peer_id == str(target.peer_id) and row.addresses == [
                f"127.0.0.1:{target.port}"
            ]


async def test_report_connection_takes_what_the_snapshot_gives() -> None:
    async with run_node() as target:
        known = PeerCandidate.at("127.0.0.1", target.port, str(target.peer_id))
        async with (
            run_node({"static": Static(known)}, node={"connect": False}) as host,
            host.events() as events,
        ):
            view = await wait_for_peer(host, "known")
            host.report_connection(view.peer_id, True, view.addresses[0].address)  # type: ignore[arg-type]
            up = await next_event(events, "connected", peer_id=str(target.peer_id))
            assert up.address == f"127.0.0.1:{target.port}"
            assert (await wait_for_peer(host, "connected")).address == view.addresses[0].address
            host.report_connection(view.peer_id, False, reason="transport closed")  # type: ignore[arg-type]
            down = await next_event(events, "disconnected", peer_id=str(target.peer_id))
            assert down.reason == "transport closed"
