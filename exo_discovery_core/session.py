"""A session: the sealed frames two peers exchange after the handshake (:mod:`.handshake`).

Each frame is a 2-byte big-endian length, then one message (:mod:`.wire`) sealed by the Noise
transport CipherState of its direction: ChaCha20-Poly1305 under a key only the two ends hold,
with a counter as nonce. So a frame that was modified, replayed, reordered, truncated or
inserted fails to open, and the connection is closed; nothing it said is acted on.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream, ByteStream

from . import wire
from .identity import PeerId
from .noise import TAGLEN, CipherState, NoiseError
from .transport import TCPStream

LENGTH = struct.Struct(">H")
MAX_SEALED = wire.MAX_FRAME + TAGLEN


class ExactReceiver(Protocol):
    """What frames are read from: exact byte counts, IncompleteRead if the stream ends first."""

    async def receive_exactly(self, count: int) -> bytes: ...


def reader(stream: ByteReceiveStream) -> ExactReceiver:
    """The node's own :class:`~.transport.TCPStream` buffers and reads exact counts itself;
    any other stream (a test's wrapper) is read through a :class:`Reader`."""
    return stream if isinstance(stream, TCPStream) else Reader(stream)


class Reader:
    """Exact byte counts from a stream, taking whatever has arrived in one read.

    anyio's ``BufferedByteReceiveStream`` asks the socket for just the bytes still missing, and
    every socket read is an event-loop checkpoint: a length and then a body cost two. Here one
    read usually holds a whole handshake message. The buffer stays below one read plus the
    largest count asked for (a 64 KiB frame).
    """

    def __init__(self, stream: ByteReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def receive_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            try:
                self._buffer += await self._stream.receive()
            except anyio.EndOfStream:
                raise anyio.IncompleteRead from None
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data


async def read_frame(receive: ExactReceiver, limit: int) -> bytes:
    """One length-prefixed frame of at most ``limit`` bytes (ProtocolError past it)."""
    (length,) = LENGTH.unpack(await receive.receive_exactly(LENGTH.size))
    if length > limit:
        raise wire.ProtocolError(f"frame of {length} bytes exceeds {limit}")
    return await receive.receive_exactly(length) if length else b""


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


class Session:
    """The sealed channel to one authenticated peer: ``send`` and ``receive`` whole messages."""

    def __init__(
        self,
        stream: ByteStream,
        receive: ExactReceiver,
        ciphers: tuple[CipherState, CipherState],
        peer_id: PeerId,
    ) -> None:
        self._stream = stream
        self._receive = receive
        self._send_cipher, self._receive_cipher = ciphers
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._broken = False  # a write was cut off after sealing: nothing more is sent
        self.peer_id = peer_id
        self.remote_record = b""
        self.listen_port = 0
        self.verify_only = False  # the initiator came to verify us, not to stay

    def __repr__(self) -> str:
        return f"Session(peer_id={self.peer_id!s})"

    async def send(self, message: dict[str, Any], timeout: float) -> None:
        """One message, sealed and whole: heartbeats, exchanges and byes share the socket."""
        await self.send_bytes(wire.dumps(message), timeout)

    async def send_bytes(self, plaintext: bytes, timeout: float) -> None:
        """Seal ``plaintext`` as one frame (the hostile suite sends what is not a message).

        Atomic for the caller: waiting for another send may be cancelled (nothing is sealed
        yet), but once sealed the frame is written whole, shielded from the caller's
        cancellation until ``timeout`` (or the caller's own deadline, if sooner): a nonce
        counted but never written would make every later frame fail to open at the peer. A
        write that cannot finish by then may have left part of a frame on the wire, so the
        session is closed (TimeoutError now, ClosedResourceError after), never left out of
        step."""
        with anyio.fail_after(timeout):
            await self._send_lock.acquire()
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()  # cancelled already: nothing sealed
            self._check_open()
            deadline = min(anyio.current_time() + timeout, anyio.current_effective_deadline())
            sealed = frame(self._send_cipher.encrypt(b"", plaintext))
            with anyio.CancelScope(shield=True), anyio.CancelScope(deadline=deadline) as limit:
                await self._stream.send(sealed)
            if limit.cancelled_caught:
                await self._break()
                raise TimeoutError(f"frame not written within {timeout:g} s; session closed")
        finally:
            self._send_lock.release()

    def write_now(self, messages: Sequence[dict[str, Any]]) -> bool:
        """Messages sealed in order and handed to the socket at once, if that waits on nothing
        (the node's own :class:`~.transport.TCPStream`, its peer reading, no send under way):
        sealing and writing are one step, so no cancellation falls between them. False, and
        nothing sealed, if it would wait: :meth:`send_all` them."""
        stream = self._stream
        if not isinstance(stream, TCPStream) or not stream.writable or self._send_lock.locked():
            return False
        self._check_open()
        data = self._seal_all(messages)
        try:
            stream.write(data)
        except BaseException:
            self._broken = True  # sealed and not written: the stream is gone in any case
            raise
        return True

    async def send_all(self, messages: Sequence[dict[str, Any]]) -> None:
        """Messages sealed in order and written at once: one system call for a burst, and no
        timeout of its own (the connection's writer, while its peer lags). Cancelled once sealed
        (the connection is ending), the session is closed rather than left with nonces the peer
        never saw."""
        async with self._send_lock:
            self._check_open()
            data = self._seal_all(messages)
            try:
                await self._stream.send(data)
            except BaseException:
                await self._break()
                raise

    def _seal_all(self, messages: Sequence[dict[str, Any]]) -> bytes:
        seal = self._send_cipher.encrypt
        return b"".join(frame(seal(b"", wire.dumps(m))) for m in messages)

    def _check_open(self) -> None:
        if self._broken:
            raise anyio.ClosedResourceError("session closed: a frame was cut off half way")

    async def _break(self) -> None:
        """A write was cut off after sealing: close, so nothing later goes out of step."""
        self._broken = True
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(self._stream)

    async def receive(self) -> dict[str, Any]:
        """The next message; ProtocolError if a frame fails to open or is not a message."""
        sealed = await read_frame(self._receive, MAX_SEALED)
        try:
            plaintext = self._receive_cipher.decrypt(b"", sealed)
        except NoiseError as exc:
            raise wire.ProtocolError(f"sealed frame: {exc}") from None
        return wire.loads(plaintext)

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self._stream)
