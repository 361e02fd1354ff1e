"""The node in-process: plugin isolation, the handshake's refusals, one connection per peer."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from exo_discovery_core import PeerCandidate, hookimpl
from exo_discovery_core.identity import Identity
from exo_discovery_core.node import Node
from exo_discovery_core.testing import next_event, run_node
from tests.support.static import Static

pytestmark = pytest.mark.anyio

FAST = {"plugin_restart_max": 0.5, "handshake_timeout": 1.0, "redial_max": 0.5}


def at(node: Node, peer_id: str | None = None) -> PeerCandidate:
    return PeerCandidate.at("127.0.0.1", node.port, peer_id)


async def test_plugin_that_raises_is_restarted_and_its_peers_kept_until_the_ttl() -> None:
    calls: list[float] = []
    kept = PeerCandidate.at("127.0.0.1", 9, source="flaky")

    class Flaky:
        @hookimpl
        def discover_peers(self) -> AsyncIterator[list[PeerCandidate]]:
            calls.append(time.monotonic())

            async def stream() -> AsyncIterator[list[PeerCandidate]]:
                if len(calls) == 1:
                    yield [kept]
                    raise RuntimeError("boom")
                await anyio.sleep_forever()
                yield []

            return stream()

    async with (
        run_node({"flaky": Flaky()}, node={**FAST, "peer_ttl": 2.0, "connect": False}) as node,
        node.events() as events,
    ):
        error = await next_event(events, "plugin_error", plugin="flaky")
        assert "RuntimeError: boom" in (error.error or "")
        with anyio.fail_after(5):
            while len(calls) < 2:  # noqa: ASYNC110 - the hook call is all there is to see
                await anyio.sleep(0.05)
        assert [p.addresses[0].port for p in node.table.merged().values()] == [9]
        lost = await next_event(events, "peer_lost", timeout=5)
        assert lost.addresses == ["127.0.0.1:9"]
        assert lost.time - error.time >= 1.5  # kept for the TTL (2 s), not dropped at the failure


async def test_a_hanging_or_misbehaving_plugin_does_not_stop_the_others() -> None:
    release = threading.Event()

    class Hangs:
        @hookimpl
        def discover_peers(self) -> None:
            release.wait(30)  # blocks in the hook call itself

    class WrongType:
        @hookimpl
        def discover_peers(self) -> list[str]:
            return ["not an iterator"]

    good = Static(PeerCandidate.at("127.0.0.1", 7))
    plugins = {"hangs": Hangs(), "wrong": WrongType(), "good": good}
    try:
        async with (
            run_node(plugins, node={**FAST, "connect": False}) as node,
            node.events() as events,
        ):
            seen: dict[str, Any] = {}
            with anyio.fail_after(5):
                async for event in events:
                    seen.setdefault(event.event, event)
                    if {"peer_discovered", "plugin_error"} <= seen.keys():
                        break
            assert seen["peer_discovered"].sources == ["good"]
            assert seen["plugin_error"].plugin == "wrong"
            assert "not an async iterator" in seen["plugin_error"].error
    finally:
        release.set()


async def test_two_nodes_connect_once_and_see_each_other_leave() -> None:
    async with run_node(node=FAST) as a, a.events() as a_events:
        plugin = Static(at(a))
        async with run_node({"static": plugin}, node=FAST) as b, b.events() as events:
            connected = await next_event(events, "connected", timeout=5)
            assert connected.peer_id == a.peer_id
            assert connected.sources == ["static"]
            assert connected.address == f"127.0.0.1:{a.port}"
            assert connected.addresses == [f"127.0.0.1:{a.port}"]
            [heard] = await plugin.wait_connections(1)
            assert heard.state.name == "CONNECTED"
            assert heard.address is not None and heard.address.port == a.port
            inbound = await next_event(a_events, "connected", timeout=10)
            assert inbound.peer_id == b.peer_id and inbound.sources == ["inbound"]
        # b has stopped and said bye: a reports it gone for that reason (not silence), and once
        gone = await next_event(a_events, "disconnected", timeout=10, peer_id=b.peer_id)
        assert gone.reason == "peer closed (shutdown)"


@pytest.mark.parametrize("attempt", range(5))
async def test_simultaneous_dials_end_with_one_connection_and_one_event_each(attempt: int) -> None:
    plugins = [Static(), Static()]
    async with (
        run_node({"static": plugins[0]}, node=FAST) as a,
        run_node({"static": plugins[1]}, node=FAST) as b,
        a.events() as a_events,
        b.events() as b_events,
    ):
        # both learn of each other at the same moment and dial at once
        plugins[0].set(at(b))
        plugins[1].set(at(a))
        for events, other in ((a_events, b), (b_events, a)):
            await next_event(events, "connected", timeout=5, peer_id=other.peer_id)
        # the duplicate is closed at once; a side left without a connection would say so
        # within the grace (the handshake timeout), so half a second more shows none came
        for events, window in ((a_events, FAST["handshake_timeout"] + 0.5), (b_events, 0.01)):
            with pytest.raises(TimeoutError):
                await next_event(events, "disconnected", timeout=window)
        for node, plugin, other in ((a, plugins[0], b), (b, plugins[1], a)):
            assert list(node.connections.connected()) == [other.peer_id]
            heard = await plugin.wait_connections(1)
            assert [e.state.name for e in plugin.connections] == ["CONNECTED"], attempt
            assert heard[0].peer_id == other.peer_id


async def raw_connect(node: Node) -> tuple[anyio.abc.SocketStream, Any]:
    stream = await anyio.connect_tcp("127.0.0.1", node.port)
    return stream, None


async def assert_still_serving(node: Node) -> None:
    plugin = Static(at(node))
    async with run_node({"static": plugin}, node=FAST) as probe, probe.events() as events:
        await next_event(events, "connected", timeout=5, peer_id=node.peer_id)


@pytest.mark.parametrize(
    "payload",
    [
        os.urandom(300),  # garbage
        struct.pack(">I", 2**31) + b"x" * 100,  # a frame announced as 2 GiB
        struct.pack(">I", 64 * 1024 * 1024),  # oversized, then silence
        struct.pack(">I", 5) + b"{bad}",  # not JSON
        struct.pack(">I", 2) + b"[]",  # JSON, not an object
    ],
    ids=["garbage", "huge-length", "oversized", "not-json", "not-object"],
)
async def test_bad_input_closes_the_connection_and_the_node_keeps_serving(payload: bytes) -> None:
    async with run_node(node=FAST) as node:
        stream = await anyio.connect_tcp("127.0.0.1", node.port)
        async with stream:
            await stream.send(payload)
            with anyio.fail_after(3):
                while True:
                    try:
                        await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                        break
        await assert_still_serving(node)


async def test_slow_client_is_cut_off_at_the_handshake_timeout() -> None:
    async with run_node(node=FAST) as node:
        started = time.monotonic()
        stream = await anyio.connect_tcp("127.0.0.1", node.port)
        async with stream:
            with anyio.fail_after(5):
                try:
                    while True:
                        await stream.send(b"\x00")  # one byte at a time, never a frame
                        await anyio.sleep(0.1)
                except (anyio.BrokenResourceError, ConnectionResetError, BrokenPipeError):
                    pass
        assert time.monotonic() - started < 1.0 + 1.5
        await assert_still_serving(node)


async def test_a_peer_claiming_an_id_it_does_not_hold_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    victim = Identity.generate()
    impostor = Identity.generate()
    impostor.peer_id = victim.peer_id  # claims the victim's id, signs with its own key
    async with run_node(node=FAST) as node, node.events() as events:
        plugins = {"static": Static(at(node))}
        async with run_node(plugins, node=FAST, identity=impostor):
            with pytest.raises(TimeoutError):
                await next_event(events, "connected", timeout=2)
        assert "could not prove its peer id" in caplog.text
        await assert_still_serving(node)


async def test_other_namespace_and_wrong_expected_id_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    green_static = Static()
    async with (
        run_node(node={**FAST, "namespace": "blue"}) as blue,
        run_node({"static": green_static}, node={**FAST, "namespace": "green"}) as green,
        green.events() as events,
    ):
        green_static.set(at(blue))
        with pytest.raises(TimeoutError):
            await next_event(events, "connected", timeout=1.5)
        assert "namespace 'blue' is not ours ('green')" in caplog.text
        [row] = green.status().peers
        assert row.state == "known" and "namespace 'blue' is not ours" in (row.last_reason or "")
    dialer_static = Static()
    async with (
        run_node(node=FAST) as real,
        run_node({"static": dialer_static}, node=FAST) as dialer,
        dialer.events() as events,
    ):
        wrong = Identity.generate().peer_id
        dialer_static.set(at(real, wrong))
        with pytest.raises(TimeoutError):
            await next_event(events, "connected", timeout=1.5)
        assert f"expected {wrong}" in caplog.text


async def test_host_program_reports_connections_itself() -> None:
    plugin = Static()
    peer = Identity.generate().peer_id
    async with (
        run_node({"static": plugin}, node={"connect": False}) as node,
        node.events() as events,
    ):
        node.report_connection(peer, True)
        assert (await next_event(events, "connected")).peer_id == peer
        node.report_connection(peer, False, reason="transport closed")
        assert (await next_event(events, "disconnected")).reason == "transport closed"
        heard = await plugin.wait_connections(2)
        assert [e.state.name for e in heard] == ["CONNECTED", "DISCONNECTED"]
