"""Discover-only (``connect = false``): each candidate is verified by one handshake (its id
proven, its record read) and the connection closed, so the host gets ids without connections."""

from __future__ import annotations

import tempfile
from typing import Any

import anyio
import pytest

from exo_discovery_core.host import ConfigError, Node, PeerId, PeerView
from exo_discovery_core.testing import next_event, run_node

pytestmark = pytest.mark.anyio


def discover_only(*bootstrap: str, **settings: object) -> Node:
    return Node.from_settings(
        namespace="lab",
        port=0,
        listen_host="127.0.0.1",
        state_dir=tempfile.mkdtemp(),
        connect=False,
        plugins={"enabled": ["bootstrap"], "bootstrap": {"peers": list(bootstrap)}},
        **settings,
    )


async def identified(node: Node) -> PeerView:
    """The peer a handshake identified (its ``peer_identified`` event, then its row)."""
    async with node.events(replay=True) as events:
        event = await next_event(events, "peer_identified")
    [peer] = [p for p in node.peers() if str(p.peer_id) == event.peer_id]
    return peer


async def test_a_bootstrap_address_alone_gives_the_peers_id_without_a_connection() -> None:
    async with (
        run_node(node={"namespace": "lab"}) as target,
        target.events() as target_events,
    ):
        host = discover_only(f"127.0.0.1:{target.port}")
        async with host, host.events(replay=True) as events:
            peer = await identified(host)
            assert peer.peer_id == target.peer_id
            assert [a.address.port for a in peer.addresses] == [target.port]
            assert peer.state == "known" and peer.address is None
            assert host.connections.connected() == {}
            kinds = []
            with anyio.move_on_after(1.0):  # the verification is over; nothing may follow it
                async for event in events:
                    kinds.append(event.event)
            assert "connected" not in kinds and "peer_identified" in kinds
        target_kinds = []
        with anyio.move_on_after(0.2):
            async for event in target_events:
                target_kinds.append(event.event)
        assert "connected" not in target_kinds, "the verified peer counted it as a connection"
        assert target.connections.connected() == {}


async def test_each_peer_is_verified_once() -> None:
    async with run_node(node={"namespace": "lab"}) as target:
        host = discover_only(f"127.0.0.1:{target.port}")
        async with host:
            calls = []
            verify = host.connections.verify

            async def counted(*args: Any) -> PeerId:
                calls.append(args[0])
                return await verify(*args)

            host.connections.verify = counted  # type: ignore[method-assign]
            await identified(host)
            await anyio.sleep(2.5)  # the identification woke the dialer: it looked again
            assert len(calls) == 1, calls


async def test_a_bootstrap_address_alone_gives_the_peers_metadata_too() -> None:
    async with run_node(node={"namespace": "lab", "meta": {"api_port": "52415"}}) as exo:
        host = discover_only(f"127.0.0.1:{exo.port}")
        async with host, host.events(replay=True) as events:
            await next_event(events, "peer_identified", peer_id=str(exo.peer_id))
            with anyio.fail_after(5):
                while host.peers()[0].meta is None:
                    await next_event(events, "peer_updated", peer_id=str(exo.peer_id))
            [view] = host.peers()
            assert view.peer_id == exo.peer_id and view.meta == {"api_port": "52415"}
            assert view.state == "known" and host.connections.connected() == {}


def test_a_wrong_settings_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^settings \[node\] conect: unknown key"):
        discover_only("127.0.0.1:1", conect=False)


async def test_with_verify_false_the_node_dials_nothing_at_all() -> None:
    """``verify = false``: the host gets the addresses its plugins found and nothing touches
    them (for candidates not on this machine, or a host that dials itself)."""
    accepted: list[object] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def record(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        await stream.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, record)
        host = discover_only(f"127.0.0.1:{port}", verify=False)
        async with host, host.events(replay=True) as events:
            await next_event(events, "peer_discovered")
            with anyio.move_on_after(1.5):  # a verification would come within a dial's first try
                async for _ in events:
                    pass
            assert [p.state for p in host.peers()] == ["known"]
        tg.cancel_scope.cancel()
    await listener.aclose()
    assert accepted == [], "verify = false still dialed the candidate"
