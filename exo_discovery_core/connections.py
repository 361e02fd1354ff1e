"""Node-to-node connections: listen, dial, handshake, heartbeats, one connection per peer.

Every transition a user sees goes through ``_up``/``_down``, which keep the set of peers reported
connected, so ``on_connection`` fires exactly once per real transition however many sockets
come and go. When two nodes dial each other at once, both keep the connection dialed by the
lower peer id; the loser is closed with a ``bye`` saying "duplicate", and the peer holding it
waits a moment for the winner instead of reporting a disconnect.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from . import handshake, wire
from .config import NodeConfig
from .identity import Identity, PeerId
from .models import Address

log = logging.getLogger("exo_discovery.connections")

DUPLICATE = "duplicate"
_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    wire.ProtocolError,
)


@dataclass(eq=False)
class Connection:
    peer_id: PeerId
    address: Address
    dialer: PeerId
    listen_port: int
    stream: SocketStream
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    send_lock: anyio.Lock = field(default_factory=anyio.Lock)
    close_reason: str | None = None

    async def send(self, message: dict[str, Any] | bytes, timeout: float) -> None:
        """One frame, whole: heartbeats, exchanges and byes share the socket."""
        data = message if isinstance(message, bytes) else wire.encode(message)
        with anyio.fail_after(timeout):
            async with self.send_lock:
                await self.stream.send(data)


class ConnectionManager:
    """Owns the sockets; reports ups and downs through two callbacks."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig,
        *,
        on_up: Callable[[PeerId, Address], None],
        on_down: Callable[[PeerId, str], None],
        on_identified: Callable[[Address, PeerId], None],
        on_message: Callable[[Connection, dict[str, Any]], None] = lambda conn, message: None,
    ) -> None:
        self.identity = identity
        self.config = config
        self.listen_port = config.port
        self.current: dict[PeerId, Connection] = {}
        self.reported: set[PeerId] = set()
        self._grace: dict[PeerId, float] = {}
        self._on_up = on_up
        self._on_down = on_down
        self._on_identified = on_identified
        self._on_message = on_message
        self._tg: TaskGroup | None = None

    # -- entry points ----------------------------------------------------------------------

    def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        tg.start_soon(self._sweep_grace)

    async def handle_inbound(self, stream: SocketStream) -> None:
        """A listener callback: whatever a peer sends, at worst its own connection is closed."""
        try:
            await self._inbound(stream)
        except Exception:  # the listener outlives every connection
            log.exception("internal error on an inbound connection; closed it")
            await anyio.aclose_forcefully(stream)

    async def _inbound(self, stream: SocketStream) -> None:
        try:
            peer: Any = stream.extra(anyio.abc.SocketAttribute.remote_address)
            remote = Address(host=str(peer[0]), port=int(peer[1]))
        except Exception:  # noqa: BLE001 - a socket without a peer address is just closed
            await stream.aclose()
            return
        try:
            result, buffered = await self._handshake(stream, expected=None)
        except (handshake.HandshakeError, TimeoutError, *_STREAM_ERRORS) as exc:
            self._refused(remote, exc, inbound=True)
            await stream.aclose()
            return
        conn = Connection(
            result.peer_id,
            Address(host=remote.host, port=result.listen_port or 1),
            result.peer_id,
            result.listen_port,
            stream,
        )
        await self._keep(conn, buffered)

    async def dial(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        """Connect and handshake; on success the connection lives on in its own task."""
        assert self._tg is not None, "start() first"
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(address.host, address.port)
        try:
            result, buffered = await self._handshake(stream, expected=expected)
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        conn = Connection(
            result.peer_id, address, self.identity.peer_id, result.listen_port, stream
        )
        self._on_identified(address, result.peer_id)
        self._tg.start_soon(self._keep, conn, buffered)
        return result.peer_id

    async def close_all(self, reason: str = "shutdown") -> None:
        with anyio.move_on_after(1.0, shield=True):
            for conn in list(self.current.values()):
                await self._close(conn, reason)

    # -- internals ---------------------------------------------------------------------------

    async def _handshake(
        self, stream: SocketStream, expected: PeerId | None
    ) -> tuple[handshake.Handshake, BufferedByteReceiveStream]:
        buffered = BufferedByteReceiveStream(stream)
        with anyio.fail_after(self.config.handshake_timeout):
            result = await handshake.perform(
                stream,
                buffered,
                identity=self.identity,
                namespace=self.config.namespace,
                listen_port=self.listen_port,
                expected=expected,
            )
        return result, buffered

    def _refused(self, remote: Address, exc: BaseException, *, inbound: bool) -> None:
        what = "inbound connection from" if inbound else "connection to"
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no handshake within {self.config.handshake_timeout:g} s"
        elif isinstance(exc, wire.ProtocolError):
            reason = f"bad frame: {exc}"
        elif isinstance(exc, _STREAM_ERRORS):
            reason = "closed during handshake"
        level = logging.DEBUG if isinstance(exc, handshake.SelfConnection) else logging.WARNING
        log.log(level, "refused %s %s: %s", what, remote, reason)

    def _admit(self, conn: Connection) -> bool:
        existing = self.current.get(conn.peer_id)
        if existing is not None and not self._prefer(conn, existing):
            return False
        self.current[conn.peer_id] = conn
        self._grace.pop(conn.peer_id, None)
        if existing is not None:
            existing.close_reason = DUPLICATE
            if self._tg is not None:
                self._tg.start_soon(self._close, existing, DUPLICATE)
        if conn.peer_id not in self.reported:
            self.reported.add(conn.peer_id)
            self._on_up(conn.peer_id, conn.address)
        return True

    def _prefer(self, new: Connection, old: Connection) -> bool:
        """Both ends pick the same survivor: the connection dialed by the lower peer id."""
        if new.dialer != old.dialer:
            return min(new.dialer, old.dialer) == new.dialer
        return False

    async def _keep(self, conn: Connection, buffered: BufferedByteReceiveStream) -> None:
        if not self._admit(conn):
            await self._close(conn, DUPLICATE)
            return
        reason = "closed"
        try:
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._heartbeat, conn)
                    reason = await self._receive_until_gone(conn, buffered)
                    tg.cancel_scope.cancel()
        except Exception:  # a bug on one connection ends that connection only
            log.exception("internal error on the connection to %s; closed it", conn.peer_id)
            reason = "internal error"
        finally:
            await anyio.aclose_forcefully(conn.stream)
            self._release(conn, conn.close_reason or reason)

    async def _receive_until_gone(
        self, conn: Connection, buffered: BufferedByteReceiveStream
    ) -> str:
        while True:
            try:
                with anyio.fail_after(self.config.dead_after):
                    message = await wire.receive(buffered)
            except TimeoutError:
                return f"no heartbeat for {self.config.dead_after:g} s"
            except _STREAM_ERRORS:
                return "connection lost"
            if message["type"] == "bye":
                said = str(message.get("reason", ""))[:100]
                return DUPLICATE if said == DUPLICATE else f"peer closed ({said or 'no reason'})"
            if message["type"] != "ping" and self.current.get(conn.peer_id) is conn:
                self._on_message(conn, message)  # unknown types are ignored by the node

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` on every current connection; a failing one is left to its keeper."""
        data = wire.encode(message)
        for conn in list(self.current.values()):
            with contextlib.suppress(TimeoutError, *_STREAM_ERRORS):
                await conn.send(data, self.config.dead_after)

    async def _heartbeat(self, conn: Connection) -> None:
        ping = wire.encode({"type": "ping"})
        while True:
            await anyio.sleep(self.config.heartbeat_interval)
            try:
                await conn.send(ping, self.config.dead_after)
            except (TimeoutError, *_STREAM_ERRORS):
                conn.close_reason = conn.close_reason or "connection lost"
                conn.scope.cancel()
                return

    async def _close(self, conn: Connection, reason: str) -> None:
        conn.close_reason = conn.close_reason or reason
        with anyio.move_on_after(0.5, shield=True):
            with contextlib.suppress(TimeoutError, *_STREAM_ERRORS):
                await conn.send({"type": "bye", "reason": reason}, 0.5)
        conn.scope.cancel()
        await anyio.aclose_forcefully(conn.stream)

    def _release(self, conn: Connection, reason: str) -> None:
        if self.current.get(conn.peer_id) is not conn:
            return  # a duplicate that lost; the peer is still connected through the winner
        del self.current[conn.peer_id]
        if reason == DUPLICATE:
            # the peer kept another connection of ours; give it time to arrive before we say "down"
            self._grace[conn.peer_id] = time.monotonic() + self.config.handshake_timeout
            return
        self._report_down(conn.peer_id, reason)

    def _report_down(self, peer_id: PeerId, reason: str) -> None:
        if peer_id in self.reported:
            self.reported.discard(peer_id)
            self._on_down(peer_id, reason)

    async def _sweep_grace(self) -> None:
        while True:
            await anyio.sleep(0.25)
            now = time.monotonic()
            for peer_id, deadline in list(self._grace.items()):
                if deadline <= now:
                    del self._grace[peer_id]
                    if peer_id not in self.current:
                        self._report_down(peer_id, "connection lost (duplicate not replaced)")
