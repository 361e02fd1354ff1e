"""The TCP stream under every node connection: an asyncio Protocol that stays armed.

anyio's asyncio ``SocketStream`` pauses its socket between reads: each ``receive()`` resumes
reading, waits for an event and pauses again (two ``epoll_ctl`` calls and a task switch), and
each ``send()`` ends in a checkpoint (another pass of the event loop). A connection reads a
frame at a time and writes a frame or a burst at a time, so while a 50-member mesh forms those
steps were a large part of a member's CPU (docs/scaling.md, "Meshing").

:class:`TCPStream` is the protocol and the stream in one object: asyncio's callbacks fill a
buffer that the reads take from. Reading stays armed until ``READ_LIMIT`` bytes wait unread,
then pauses until the reader has taken some (TCP pushes back on a peer that floods), so the
buffer never holds more than ``READ_LIMIT`` and one socket read (``READ_CHUNK``). Bytes that
are already there are returned without a task switch; a reader waits only for bytes that have
not arrived, and is woken once there are as many as it asked for. A write goes to the transport
at once and waits only while more than ``WRITE_HIGH`` bytes are unsent (a peer that does not
read): what was handed over is whole in the transport's buffer, so a writer cancelled while it
waits leaves no frame half written. It is an anyio ``SocketStream`` (its extra attributes,
``aclose``), so the handshake and the session use it as they use any stream.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
from typing import cast

import anyio
import anyio.abc
from anyio.streams.stapled import MultiListener

from .ip import parse_ip, unbracketed

# unread bytes held before reading pauses: twice the largest count read at once (a sealed frame,
# 16 KiB + tag + length), so one connection's buffer, at most READ_LIMIT + READ_CHUNK, stays
# small however many connections a flooding peer set holds (anyio's recv took 256 KiB at once)
READ_LIMIT = 32 * 1024
READ_CHUNK = 16 * 1024  # at most this much is taken from the socket at once
WRITE_HIGH = 64 * 1024  # unsent bytes above which a write waits for the peer to read
LISTEN_BACKLOG = 65536  # as anyio's listener (the kernel caps it at net.core.somaxconn)
HAPPY_EYEBALLS_DELAY = 0.25  # s before the next address of a name is tried (RFC 8305, as anyio)
_ERRNO = re.compile(r"\[Errno (\d+)\]")


class _Scratch(threading.local):
    """Where the socket is read into before the bytes are copied to a stream's buffer: one per
    thread (a :class:`~.threaded.NodeThread` runs its own loop), shared by every stream on it,
    for asyncio calls ``get_buffer`` and ``buffer_updated`` back to back. asyncio's own read
    allocates 256 KiB for each ``recv`` (glibc maps and unmaps it: page faults on every frame)."""

    def __init__(self) -> None:
        self.view = memoryview(bytearray(READ_CHUNK))


_scratch = _Scratch()


class TCPStream(anyio.abc.SocketStream, asyncio.BufferedProtocol):
    """One TCP connection: asyncio's protocol callbacks on one side, anyio's stream on the other.

    Made by :func:`connect` and :class:`TCPListener` only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._wanted = 0  # bytes the waiting reader needs
        self._reader: asyncio.Future[None] | None = None  # the waiting reader's wake-up
        self._writer: asyncio.Future[None] | None = None  # the waiting writer's wake-up
        self._reading_paused = False
        self._writing_paused = False
        self._eof = False  # the peer sent all it will send
        self._lost = False  # the connection is gone (asyncio's connection_lost)
        self._error: BaseException | None = None  # ... because of this, if it failed
        self._closed = False  # closed by our own aclose

    def __repr__(self) -> str:
        return f"TCPStream(buffered={len(self._buffer)}, closed={self._closed or self._lost})"

    @property
    def buffered(self) -> int:
        """Bytes received and not yet read: at most ``READ_LIMIT`` + ``READ_CHUNK``."""
        return len(self._buffer)

    @property
    def unsent(self) -> int:
        """Bytes handed to :meth:`send` that the kernel has not taken yet."""
        return 0 if self._transport is None else self._transport.get_write_buffer_size()

    # -- asyncio's side: called by the event loop ------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH)

    def get_buffer(self, sizehint: int) -> memoryview:
        return _scratch.view

    def buffer_updated(self, nbytes: int) -> None:
        buffer = self._buffer
        buffer += _scratch.view[:nbytes]
        if len(buffer) >= READ_LIMIT and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        if self._reader is not None and len(buffer) >= self._wanted:
            _wake(self._reader)

    def eof_received(self) -> bool:
        self._eof = True
        if self._reader is not None:
            _wake(self._reader)
        return True  # half-closed: we may still write (a bye), until we close

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._error = True, exc
        for waiter in (self._reader, self._writer):
            if waiter is not None:
                _wake(waiter)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._writer is not None:
            _wake(self._writer)

    # -- anyio's side: called by the connection's tasks ------------------------------------

    @property
    def _raw_socket(self) -> socket.socket:
        assert self._transport is not None
        return cast(socket.socket, self._transport.get_extra_info("socket"))

    async def receive_exactly(self, count: int) -> bytes:
        """``count`` bytes (at most ``READ_LIMIT``); IncompleteRead if the stream ends first.

        Cancelled while it waits, it takes nothing: the bytes that came stay for the next read."""
        buffer = self._buffer
        if len(buffer) < count:
            try:
                await self._wait_for(count)
            except anyio.EndOfStream:
                raise anyio.IncompleteRead from None
        data = bytes(buffer[:count])
        del buffer[:count]
        if self._reading_paused and len(buffer) < READ_LIMIT:
            self._resume_reading()
        return data

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """What has arrived, at most ``max_bytes``, waiting only if nothing has."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        if not self._buffer:
            await self._wait_for(1)
        return await self.receive_exactly(min(max_bytes, len(self._buffer)))

    async def _wait_for(self, count: int) -> None:
        """Until ``count`` bytes are buffered; EndOfStream, BrokenResourceError or
        ClosedResourceError if they never will be."""
        if count > READ_LIMIT:
            raise ValueError(f"a read of {count} bytes exceeds the buffer's {READ_LIMIT}")
        if self._reader is not None:
            raise anyio.BusyResourceError("reading from")
        while len(self._buffer) < count:
            self._check_readable()
            if self._reading_paused:
                self._resume_reading()
            self._wanted, self._reader = count, self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    def _check_readable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise anyio.BrokenResourceError from self._error
        if self._eof or self._lost:
            raise anyio.EndOfStream

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._transport is not None and not self._lost:
            self._transport.resume_reading()

    @property
    def writable(self) -> bool:
        """A :meth:`write` now waits on nothing: the peer reads (less than ``WRITE_HIGH``
        unsent) and no :meth:`send` is waiting for it."""
        return not self._writing_paused and self._writer is None

    def write(self, item: bytes) -> None:
        """Hand ``item`` to the transport whole, now, without waiting (:meth:`send` waits
        after it while the peer lags)."""
        self._check_writable()
        assert self._transport is not None
        self._transport.write(item)

    async def send(self, item: bytes) -> None:
        """Hand ``item`` to the transport whole; wait only while the peer lags ``WRITE_HIGH``
        behind (cancelled then, ``item`` still goes out whole unless the stream is closed)."""
        self.write(item)
        while self._writing_paused:
            if self._writer is not None:
                raise anyio.BusyResourceError("writing to")
            self._writer = self._loop.create_future()
            try:
                await self._writer
            finally:
                self._writer = None
            self._check_writable()

    def _check_writable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        assert self._transport is not None
        if self._lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from self._error

    async def send_eof(self) -> None:
        if self._transport is not None and not self._lost and self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        """Close at once (what is unsent is dropped, as anyio's stream does: a peer that lets
        it pile up is not reading); a waiting reader or writer gets ClosedResourceError."""
        self._closed = True
        if self._transport is not None:
            self._transport.abort()
        for waiter in (self._reader, self._writer):
            if waiter is not None:
                _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def connect(host: str, port: int) -> TCPStream:
    """A TCP connection to ``host`` (an address, or a name: its addresses raced as anyio's
    ``connect_tcp`` does); OSError if none answers.

    An address is dialed without the race: asyncio runs it even for one address (two more
    tasks a dial, and a cycle of them left as garbage, ~1.7 KiB a connection until the
    collector's rare full pass: a member of a 50-member mesh at rest held 2,490 unreachable
    objects with the race, 722 without)."""
    loop = asyncio.get_running_loop()
    delay = None if parse_ip(host) is not None else HAPPY_EYEBALLS_DELAY
    try:
        _, stream = await loop.create_connection(
            lambda: TCPStream(loop), host, port, happy_eyeballs_delay=delay
        )
    except UnicodeError:  # a name IDNA cannot encode: no address to try
        raise OSError(f"{host[:80]!r} is not a host name that can be looked up") from None
    except OSError as exc:
        # every address of a name failed: asyncio says "Multiple exceptions: [Errno 111] ..."
        # without an errno (Python 3.11 has no all_errors); the first one's is the reason
        found = _ERRNO.search(str(exc)) if exc.errno is None else None
        if found is None:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code)) from exc
    return stream


class TCPListener(anyio.abc.SocketListener):
    """One listening socket of an anyio TCP listener (which bound it: addresses, reuse,
    backlog), accepting :class:`TCPStream` connections."""

    def __init__(self, bound: anyio.abc.SocketListener) -> None:
        self._bound = bound

    @property
    def _raw_socket(self) -> socket.socket:
        return self._bound.extra(anyio.abc.SocketAttribute.raw_socket)

    async def accept(self) -> TCPStream:
        loop = asyncio.get_running_loop()
        client, _ = await loop.sock_accept(self._raw_socket)
        _, stream = await loop.connect_accepted_socket(lambda: TCPStream(loop), client)
        return stream

    async def aclose(self) -> None:
        await self._bound.aclose()


async def listen(host: str | None, port: int) -> MultiListener[anyio.abc.SocketStream]:
    """Listen on ``port`` of ``host`` (every address if None: IPv4 and IPv6 each a socket).

    An IP address is bound here, without a lookup: anyio's listener asks ``getaddrinfo`` first,
    which asyncio runs in the loop's default executor, so a node told to listen on 127.0.0.1
    started a thread (kept for the life of the loop: an embedding host's executor) and the
    resolver for an address it was given. A name, or every address, is looked up as anyio does.
    """
    bare = unbracketed(host or "")
    if parse_ip(bare) is None or "%" in bare:  # a name, every address, or a zone to look up
        bound = await anyio.create_tcp_listener(local_host=host, local_port=port)
        found = [cast(anyio.abc.SocketListener, part) for part in bound.listeners]
    else:
        family = socket.AF_INET6 if ":" in bare else socket.AF_INET
        sock = socket.create_server((bare, port), family=family, backlog=LISTEN_BACKLOG)
        sock.setblocking(False)
        found = [await anyio.abc.SocketListener.from_socket(sock)]
    return MultiListener([TCPListener(part) for part in found])
