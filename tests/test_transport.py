"""The node's TCP stream (:mod:`exo_discovery_core.transport`) over real loopback sockets.

The far end is a plain blocking socket driven from a worker thread, so it floods, stops
reading, half-closes or resets exactly as a peer's kernel would. What is checked: what a
flooding peer can make the stream buffer, that every byte arrives in order across the pauses,
EOF and close, and that a read or a write cancelled half way loses and repeats nothing.
"""

from __future__ import annotations

import asyncio
import asyncio.staggered
import errno
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from exo_discovery_core import session, transport
from exo_discovery_core.transport import READ_CHUNK, READ_LIMIT, WRITE_HIGH, TCPStream

pytestmark = pytest.mark.anyio
BOUND = READ_LIMIT + READ_CHUNK  # the most a stream ever holds unread
PEER_TIMEOUT = 20.0  # s: a blocked peer thread gives up (the test then fails, never hangs)


def pattern(size: int, salt: int = 0) -> bytes:
    """``size`` bytes in which every offset is told apart: a lost, repeated or reordered chunk
    shows."""
    words = (size + 3) // 4
    return struct.pack(f">{words}I", *((i * 2654435761 + salt) & 0xFFFFFFFF for i in range(words)))[
        :size
    ]


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@asynccontextmanager
async def accepted(
    peer_buffer: int | None = None,
) -> AsyncIterator[tuple[TCPStream, socket.socket]]:
    """A stream accepted by :func:`transport.listen`, and the peer's blocking socket."""
    listener = await transport.listen("127.0.0.1", 0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    peer = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if peer_buffer is not None:  # before connecting, so the window is small from the start
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, peer_buffer)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_buffer)
    peer.settimeout(PEER_TIMEOUT)
    try:
        peer.connect(("127.0.0.1", port))  # the kernel completes it from the backlog
        with anyio.fail_after(10):
            stream = await listener.listeners[0].accept()
        assert isinstance(stream, TCPStream)
        try:
            yield stream, peer
        finally:
            await stream.aclose()
    finally:
        peer.close()
        await listener.aclose()


async def test_a_flooding_peer_is_held_to_the_bound_and_every_byte_arrives_in_order() -> None:
    """Reading pauses once ``READ_LIMIT`` bytes wait unread: the rest stays in the kernel, and
    the peer's send blocks (TCP pushes back) rather than the node buffering it."""
    flood = pattern(4 * 1024 * 1024)
    async with accepted(peer_buffer=64 * 1024) as (stream, peer):
        stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024
        )
        sent = anyio.Event()

        async def send_all() -> None:
            await anyio.to_thread.run_sync(peer.sendall, flood)
            sent.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(send_all)
            with anyio.fail_after(10):
                while stream.buffered < READ_LIMIT:  # noqa: ASYNC110 - the loop fills it as bytes come
                    await anyio.sleep(0.01)
            assert stream.buffered <= BOUND
            assert not sent.is_set(), "the whole flood was taken: nothing pushed back on the peer"
            received = bytearray()
            most = 0
            with anyio.fail_after(30):
                while len(received) < len(flood):
                    received += await stream.receive_exactly(
                        min(READ_CHUNK, len(flood) - len(received))
                    )
                    most = max(most, stream.buffered)
                await sent.wait()
        assert most <= BOUND
        assert received == flood


async def test_a_read_cancelled_half_way_takes_nothing_and_the_next_gets_it_all() -> None:
    async with accepted() as (stream, peer):
        peer.sendall(b"12345")
        with anyio.move_on_after(0.2) as waiting:
            await stream.receive_exactly(10)  # five of ten came: it waits, and is cancelled
        assert waiting.cancelled_caught
        assert stream.buffered == 5
        peer.sendall(b"67890abc")
        with anyio.fail_after(10):
            assert await stream.receive_exactly(10) == b"1234567890"
            assert await stream.receive_exactly(3) == b"abc"


async def test_eof_gives_what_came_then_incomplete_read_then_end_of_stream() -> None:
    async with accepted() as (stream, peer):
        peer.sendall(b"abcde")
        peer.shutdown(socket.SHUT_WR)
        with anyio.fail_after(10):
            assert await stream.receive_exactly(3) == b"abc"
            with pytest.raises(anyio.IncompleteRead):
                await stream.receive_exactly(5)  # the stream ended two bytes short
            assert await stream.receive() == b"de"  # still there: a failed read takes nothing
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            await stream.send(b"bye")  # half-closed: we may still say something
            assert await anyio.to_thread.run_sync(recv_exactly, peer, 3) == b"bye"


async def reader_ended_by(stream: TCPStream, end: Callable[[], Awaitable[None]]) -> BaseException:
    """What a reader waiting on ``stream`` raised when ``end()`` ran while it waited."""
    failed: list[BaseException] = []

    async def read() -> None:
        try:
            await stream.receive_exactly(2)
        except Exception as exc:  # noqa: BLE001 - the test looks at which
            failed.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await anyio.wait_all_tasks_blocked()
            await end()
    [error] = failed
    return error


async def test_a_reset_is_a_broken_stream_for_a_waiting_reader_and_for_the_next_write() -> None:
    async with accepted() as (stream, peer):

        async def reset() -> None:
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()  # linger 0: an RST, as a killed peer's kernel may send

        error = await reader_ended_by(stream, reset)
        assert isinstance(error, (anyio.BrokenResourceError, anyio.EndOfStream))
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")


async def test_close_ends_a_waiting_reader_and_the_peer_sees_the_end() -> None:
    async with accepted() as (stream, peer):
        assert isinstance(await reader_ended_by(stream, stream.aclose), anyio.ClosedResourceError)
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()
        assert await anyio.to_thread.run_sync(peer.recv, 10) == b""


async def test_a_write_waits_only_for_a_peer_that_lags_and_a_cancelled_one_still_goes_out_whole() -> (
    None
):
    """Writes return at once while the kernel takes them; against a peer that stopped reading
    they wait once ``WRITE_HIGH`` is unsent. Cancelled then, the item already handed over is
    still written whole, so nothing after it is out of step; the stream goes on working."""
    item_size = 16 * 1024
    async with accepted(peer_buffer=32 * 1024) as (stream, peer):
        stream.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024
        )
        handed = 0  # items whose send returned
        writer = anyio.CancelScope()

        async def flood() -> None:
            nonlocal handed
            with writer:
                while True:
                    await stream.send(pattern(item_size, handed))
                    handed += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await anyio.wait_all_tasks_blocked()  # the flood waits: the peer reads nothing
            assert stream.unsent > WRITE_HIGH
            writer.cancel()
        assert writer.cancelled_caught
        expected = b"".join(pattern(item_size, i) for i in range(handed + 1)) + b"after"
        received = b""

        async def read_all() -> None:
            nonlocal received
            received = await anyio.to_thread.run_sync(recv_exactly, peer, len(expected))

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read_all)  # the peer reads again ...
                await stream.send(b"after")  # ... and the stream, not broken, goes on
        assert received == expected


async def test_connect_reaches_a_listener_and_a_refusal_says_why() -> None:
    listener = await transport.listen("127.0.0.1", 0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with anyio.create_task_group() as tg:
        accepted: list[anyio.abc.SocketStream] = []

        async def accept_one() -> None:
            accepted.append(await listener.listeners[0].accept())
            await accepted[0].send(b"hello")

        tg.start_soon(accept_one)
        with anyio.fail_after(10):
            stream = await transport.connect("127.0.0.1", port)
            assert await stream.receive_exactly(5) == b"hello"
        await stream.aclose()
    await accepted[0].aclose()
    await listener.aclose()
    with socket.socket() as bound:  # a port held but not listening: refused, whoever else runs
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as refused:
            await transport.connect("127.0.0.1", bound.getsockname()[1])
    assert refused.value.errno == errno.ECONNREFUSED


async def test_an_address_is_dialed_without_racing_a_name_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """asyncio races a name's addresses (happy eyeballs), and would race a lone address too:
    two more tasks for each dial, and a cycle of garbage left behind (``connect``'s docstring)."""
    raced: list[str] = []
    real_race = asyncio.staggered.staggered_race

    async def counted(*args: Any, **kwargs: Any) -> Any:
        raced.append("race")
        return await real_race(*args, **kwargs)

    monkeypatch.setattr(asyncio.staggered, "staggered_race", counted)
    listener = await transport.listen("127.0.0.1", 0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    with anyio.fail_after(10):
        for host in ("127.0.0.1", "localhost"):
            stream = await transport.connect(host, port)
            await stream.aclose()
            assert raced == ([] if host == "127.0.0.1" else ["race"]), host
    await listener.aclose()


async def test_an_address_is_listened_on_without_a_lookup_and_a_name_with_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """anyio's listener asks getaddrinfo even for an address, in the loop's default executor:
    a thread for the life of the loop (an embedding host's) and the resolver, for nothing."""
    loop = asyncio.get_running_loop()
    looked_up: list[object] = []
    real_getaddrinfo = loop.getaddrinfo

    async def counted(host: object, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        return await real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counted)
    hosts = ["127.0.0.1", "[127.0.0.1]"] + (["::1", "[::1]"] if socket.has_ipv6 else [])
    for host in hosts:
        try:
            listener = await transport.listen(host, 0)
        except OSError as exc:  # a system without IPv6 on loopback
            assert ":" in host and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
            continue
        port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        with anyio.fail_after(10):
            stream = await transport.connect(host.strip("[]"), port)
            accepted = await listener.listeners[0].accept()
        await stream.aclose()
        await accepted.aclose()
        await listener.aclose()
    assert looked_up == [], "an address was looked up"
    assert loop._default_executor is None  # type: ignore[attr-defined]  # no thread started
    listener = await transport.listen("localhost", 0)
    await listener.aclose()
    assert looked_up == [b"localhost"]  # the name, as anyio encodes it (IDNA)


def test_the_largest_frame_fits_the_buffer() -> None:
    """A session reads a frame's length and then its body; the buffer holds the largest whole."""
    assert session.LENGTH.size + session.MAX_SEALED <= READ_LIMIT


async def test_a_read_larger_than_the_buffer_is_refused() -> None:
    async with accepted() as (stream, _):
        with pytest.raises(ValueError, match="exceeds"):
            await stream.receive_exactly(READ_LIMIT + 1)
