"""Slow and many: slow-loris clients are cut at the handshake timeout, a flood of connections
does not stop a real peer from connecting. All on 127.0.0.1, against ONE real node per test.

Cases: ``SLOW_CLIENTS`` (10) concurrent slow-loris clients (one byte per 100 ms, of a valid
handshake's first message or of garbage); ``FLOOD`` (300) connections opened as fast as possible;
``FRAMES`` (2,000) messages on one authenticated connection as fast as possible; the same
connection written as fast as TCP takes it, to see where the unread bytes wait.
"""

from __future__ import annotations

import contextlib
import time

import anyio
from anyio.abc import SocketStream

from exo_discovery_core.handshake import Credentials
from exo_discovery_core.identity import Identity
from exo_discovery_core.transport import READ_CHUNK, READ_LIMIT, TCPStream
from tests.support.hostile import (
    CLOSED_ERRORS,
    LOOPBACK,
    PREAMBLE,
    LiveNode,
    frame,
    real_peer_connects,
)

SLOW_CLIENTS = 10
FLOOD = 300
HANDSHAKE_TIMEOUT = 1.0
SLACK = 1.5


def test_slow_loris_is_cut_at_the_handshake_timeout() -> None:
    """Ten clients each send one byte per 100 ms (half the start of a real handshake, half
    garbage); every one is cut within handshake_timeout + slack, and a real peer connects
    meanwhile."""
    state = Credentials(Identity.generate(), namespace="exo").noise(initiator=True, key=None)
    hello = (PREAMBLE + frame(state.write_message())) * 2
    with LiveNode(node={"handshake_timeout": HANDSHAKE_TIMEOUT}) as live:
        before = live.state()

        async def slow(payload: bytes, cut_after: list[float]) -> None:
            started = anyio.current_time()
            stream = await anyio.connect_tcp(LOOPBACK, live.node.port)
            async with stream:
                with anyio.fail_after(HANDSHAKE_TIMEOUT + SLACK + 1.0):
                    try:
                        for i in range(len(payload)):
                            await stream.send(payload[i : i + 1])
                            await anyio.sleep(0.1)
                        raise AssertionError("the whole payload went through, never cut")
                    except CLOSED_ERRORS:
                        pass
            cut_after.append(anyio.current_time() - started)

        async def attack() -> tuple[list[float], float]:
            cut_after: list[float] = []
            async with anyio.create_task_group() as tg:
                for i in range(SLOW_CLIENTS):
                    tg.start_soon(slow, hello if i % 2 == 0 else bytes(range(256)) * 4, cut_after)
                took = await real_peer_connects(live.node, within=HANDSHAKE_TIMEOUT + 3)
            return cut_after, took

        cut_after, took = live.call(attack)
        assert len(cut_after) == SLOW_CLIENTS
        # cut = the node closed; the client sees it on its next send (<= 0.1 s later, or two
        # sends when the first write after the close still lands in the kernel buffer)
        assert max(cut_after) < HANDSHAKE_TIMEOUT + SLACK, cut_after
        assert took < HANDSHAKE_TIMEOUT + 3
        live.check_alive()
        assert live.state() == before


def test_connection_flood_does_not_stop_a_real_peer() -> None:
    """300 connections opened as fast as possible (half held open silently, half closed at once
    or sending garbage); meanwhile and afterwards a real peer connects within 5 s."""
    with LiveNode(node={"handshake_timeout": 2.0}) as live:
        before = live.state()

        async def flood() -> tuple[int, float, float]:
            held: list[SocketStream] = []
            opened = 0
            started = anyio.current_time()
            try:
                async with anyio.create_task_group() as tg:

                    async def one(i: int) -> None:
                        nonlocal opened
                        with contextlib.suppress(*CLOSED_ERRORS):
                            stream = await anyio.connect_tcp(LOOPBACK, live.node.port)
                            opened += 1
                            if i % 2 == 0:
                                held.append(stream)
                                return
                            async with stream:
                                if i % 4 == 1:
                                    await stream.send(b"\xff" * 64)

                    for i in range(FLOOD):
                        tg.start_soon(one, i)
                flood_took = anyio.current_time() - started
                during = await real_peer_connects(live.node, within=5.0)
            finally:
                for stream in held:
                    await anyio.aclose_forcefully(stream)
            return opened, flood_took, during

        begun = time.monotonic()
        opened, flood_took, during = live.call(flood)
        assert opened == FLOOD, f"only {opened} of {FLOOD} connections were accepted"
        assert flood_took < 10.0
        assert during < 5.0
        assert live.real_peer_connects() < 5.0
        live.check_alive()
        assert live.state() == before
        assert time.monotonic() - begun < 30.0


FRAMES = 2000
FRAME_RATE, FRAME_BURST = 50.0, 100


def test_a_frame_flood_is_read_at_frame_rate_and_a_real_peer_still_connects() -> None:
    """An authenticated peer sends ``FRAMES`` (2,000) messages as fast as it can: the node reads
    at most frame_burst + frame_rate x t of them in t seconds (the rest wait in TCP, which
    slows the sender down), stays up and still connects a real peer. Before, every frame was
    read and acted on as fast as it came."""
    from tests.support.hostile import authenticate

    node = {"frame_rate": FRAME_RATE, "frame_burst": FRAME_BURST}
    with LiveNode(node=node) as live:

        async def flood() -> tuple[float, int]:
            flooder = Identity.generate()
            session = await authenticate(live.node.port, flooder)
            try:
                started = time.monotonic()
                async with anyio.create_task_group() as tg:

                    async def send_all() -> None:
                        with contextlib.suppress(TimeoutError, *CLOSED_ERRORS):
                            for i in range(FRAMES):
                                await session.send({"type": "flood", "n": i}, 30.0)

                    tg.start_soon(send_all)
                    await anyio.sleep(2.0)  # a measurement window: count what was read in it
                    elapsed = time.monotonic() - started
                    count = live.node.connections.frames_read().get(flooder.peer_id, 0)
                    tg.cancel_scope.cancel()
                return elapsed, count
            finally:
                await session.aclose()

        elapsed, count = live.call(flood)
        bound = FRAME_BURST + FRAME_RATE * elapsed
        assert 0 < count <= bound + 2, f"{count} frames read in {elapsed:.2f} s (bound {bound:.0f})"
        live.check_alive()
        assert live.real_peer_connects() < 5.0


PAD = "x" * 4000  # a large frame, so the flood is mostly bytes
WINDOW = 2.0  # seconds of flooding
FLOOD_FRAMES = 10_000  # 40 MB: more than the kernel buffers of both ends can take


def test_a_byte_flood_waits_in_tcp_not_in_the_node() -> None:
    """An authenticated peer writes large frames as fast as TCP takes them, while the node reads
    them at frame_rate: the node holds at most READ_LIMIT + READ_CHUNK bytes of them unread (its
    stream stops reading; TCP pushes back on the sender), whatever the sender has queued, and a
    real peer still connects. A connection that buffered everything it was sent would let one
    peer cost the node any amount of memory."""
    from tests.support.hostile import authenticate

    node = {"frame_rate": FRAME_RATE, "frame_burst": FRAME_BURST}
    with LiveNode(node=node) as live:

        async def flood() -> tuple[int, int, int]:
            flooder = Identity.generate()
            session = await authenticate(live.node.port, flooder)
            sent = 0
            try:
                with anyio.fail_after(5):
                    while flooder.peer_id not in live.node.connections.connected():  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                # the node's end of this connection: its session's stream (no public handle)
                stream = live.node.connections._current[flooder.peer_id].channel._stream
                assert isinstance(stream, TCPStream)
                most = 0
                done = anyio.Event()
                async with anyio.create_task_group() as tg:

                    async def send_all() -> None:  # for WINDOW s: its deadline ends a write
                        nonlocal sent
                        with (
                            anyio.move_on_after(WINDOW),
                            contextlib.suppress(TimeoutError, *CLOSED_ERRORS),
                        ):
                            for i in range(FLOOD_FRAMES):
                                await session.send({"type": "flood", "n": i, "pad": PAD}, 30.0)
                                sent += 1
                        done.set()

                    tg.start_soon(send_all)
                    while not done.is_set():  # the most held unread while the peer floods
                        most = max(most, stream.buffered)
                        await anyio.sleep(0.005)
                read = live.node.connections.frames_read().get(flooder.peer_id, 0)
                return most, sent, read
            finally:
                await session.aclose()

        most, sent, read = live.call(flood)
        assert most <= READ_LIMIT + READ_CHUNK, f"the node held {most} bytes unread"
        assert sent < FLOOD_FRAMES, "every frame went out: nothing pushed back on the sender"
        assert read < sent, f"the node read {read} of {sent} frames: the flood never waited"
        live.check_alive()
        assert live.real_peer_connects() < 5.0
