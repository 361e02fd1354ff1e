"""Node-to-node connections: listen, dial, handshake, liveness, one connection per peer.

Everything the manager has to say goes to one :class:`ConnectionListener`. Every transition a
user sees goes through ``_admit``/``_release``, which keep the set of peers reported connected, so
``connection_up``/``connection_down`` fire exactly once per real transition however many sockets
come and go. When two nodes dial each other at once, both keep the connection dialed by the
lower peer id; the loser is closed with a ``bye`` saying "duplicate", and the peer holding it
waits a moment for the winner instead of reporting a disconnect.

The handshake is called in one place (``_handshake``: the v2 Noise handshake of
:mod:`.handshake`) and frames are read and written in one place (the sealed
:class:`~.session.Session`), so the wire protocol can change without touching the rest.
Whether a silent peer is still alive is :mod:`.liveness`'s business: one timer for the node
(``_timer``) runs it, and every frame in or out is reported to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import SocketStream, TaskGroup

from . import handshake, liveness, records, transport, wire
from .config import NodeConfig
from .heartbeat import PingClock
from .identity import Identity, PeerId
from .limits import Ticket, TokenBucket
from .liveness import Liveness
from .logonce import LogOnce
from .models import Address
from .records import LocalRecord, PeerRecord
from .session import Session
from .text import logger, shown

log = logger("exo_discovery.connections")

DUPLICATE = "duplicate"
SHUTDOWN = "shutdown"  # the reason our own connections end with when the node stops
VERIFIED = "verified"  # the bye to an initiator that only came to verify us
MAX_BYE_REASON = 100  # characters of a peer's bye reason kept (and shown)
# A connection no heartbeat watches (not a ring neighbour) still notices a dead link: the kernel
# probes it after this idle time, and gives up after KEEPALIVE_COUNT unanswered probes.
KEEPALIVE_IDLE_S = 10
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT = 3
# with max_connections: a backstop (see Liveness.probe_silent_after), two relay refreshes
# (exchange.REFRESH, 30 s, jittered by 10 %), so that a live connection, which hears a refresh
# at least that often, is never probed at rest (at one refresh every connection was, a frame
# each way per connection and 30 s)
PROBE_SILENT_AFTER = 60.0
OUTBOX = 64  # frames queued for one peer; a peer that lets more pile up is not reading: closed


def closed_by_peer(said: str) -> str:
    """The reason a connection ended with when the peer closed it saying ``said`` (its bye)."""
    return f"peer closed ({said or 'no reason'})"


_STREAM_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    wire.ProtocolError,
)


class DialError(Exception):
    """A dial that ended without a connection; the message says why, never empty.

    ``refused`` is True when the peer answered and the handshake refused it (another namespace,
    another id, a bad proof): worth a warning, unlike a peer that is not up yet.
    ``incompatible`` is the protocol the peer speaks when it is not ours.
    """

    def __init__(
        self, reason: str, *, refused: bool = False, incompatible: str | None = None
    ) -> None:
        super().__init__(reason)
        self.refused = refused
        self.incompatible = incompatible


class DialedSelf(DialError):
    """The address answered with this node's own id."""


class ConnectionListener(Protocol):
    """The one outlet of a :class:`ConnectionManager`."""

    def identified(self, address: Address, peer_id: PeerId) -> None:
        """A dial to ``address`` reached ``peer_id`` (this node's own id: it dialed itself)."""

    def connection_up(self, peer_id: PeerId, address: Address) -> None:
        """``peer_id`` is connected now (once per transition)."""

    def path_changed(self, peer_id: PeerId, old: Address, new: Address) -> None:
        """A connected peer moved to another connection (a better path); it never went down."""

    def connection_down(self, peer_id: PeerId, reason: str) -> None:
        """``peer_id`` is no longer connected (once per transition)."""

    def received(self, peer_id: PeerId, address: Address, message: dict[str, Any]) -> None:
        """A frame other than a heartbeat or a bye from a connected peer."""

    def authenticated(self, record: PeerRecord, live: PeerRecord | None) -> dict[str, Any] | None:
        """A handshake showed the peer's own signed record (``live``: the record of the
        connection already up to that peer id, if any); returns a message to send it first."""

    def twin(self, record: PeerRecord) -> None:
        """A handshake reached another node holding this node's own key (another boot id)."""


def _connect_failure(exc: OSError) -> str:
    """``connection refused``, not anyio's "All connection attempts failed" around it."""
    causes: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):  # one per address the name resolved to
        causes = [*exc.__cause__.exceptions, exc]
    elif exc.__cause__ is not None:
        causes = [exc.__cause__, exc]
    for cause in causes:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass(eq=False)
class Opened:
    """A dialed connection whose handshake is done but which is not kept yet (:meth:`adopt` it
    or :meth:`discard` it): so parallel dials of one peer keep exactly one."""

    peer_id: PeerId
    address: Address
    channel: Session
    connect_seconds: float  # the TCP connect alone: one round trip on this path
    record: PeerRecord


class Outbox:
    """The frames queued for one connection: queueing never waits, at most ``limit`` are held,
    and what was queued in one pass of the event loop is written at once (one write a burst).

    No task writes for the connection's life: the first frame queued asks for a flush
    (``busy``: a callback of the loop, :meth:`ConnectionManager._flush`), which seals and hands
    the batch to the socket there and then; only when the peer lags (``WRITE_HIGH`` unsent) does
    a writer task take over, and it ends when the queue is empty. Held by every connection for as
    long as it lives, so it keeps little at rest: a list (an empty deque holds a 64-slot block),
    and the event a closer waits on made only when someone waits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.closed = False  # closing, or its writes ended: nothing more is queued
        self.finished = False  # its writes ended: all sent, or its socket failed
        self.busy = False  # a flush is due or a writer runs: it takes what is queued
        self._frames: list[dict[str, Any]] = []
        self._done: anyio.Event | None = None

    def put(self, message: dict[str, Any]) -> bool:
        """Queue ``message``; False when closed. ``OverflowError`` when ``limit`` are queued."""
        if self.closed:
            return False
        if len(self._frames) >= self.limit:
            raise OverflowError(f"{self.limit} frames queued")
        self._frames.append(message)
        return True

    def __len__(self) -> int:
        return len(self._frames)

    def take(self) -> list[dict[str, Any]]:
        """All that is queued, in order (the list is the caller's)."""
        batch, self._frames = self._frames, []
        return batch

    def close(self) -> None:
        """Queue nothing more; what is queued is still sent, then the writes end."""
        self.closed = True
        if not self.busy:
            self.finish()

    def idle(self) -> None:
        """Said by the flush or the writer once the queue is empty."""
        self.busy = False
        if self.closed:
            self.finish()

    def finish(self) -> None:
        """The writes ended: nothing queued is sent any more."""
        self.closed = self.finished = True
        self._frames = []
        if self._done is not None:
            self._done.set()

    async def wait_finished(self) -> None:
        """Until the writes have ended (at once if they have)."""
        if not self.finished:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()


@dataclass(eq=False)
class Connection:
    peer_id: PeerId
    address: Address
    dialer: PeerId
    channel: Session
    record: PeerRecord
    frames: TokenBucket
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    close_reason: str | None = None
    rtt: float | None = None  # seconds: the TCP connect of a connection we dialed (one round trip)
    clock: PingClock = field(default_factory=PingClock)  # then the heartbeats' round trips
    writing: bool = False  # kept: its frames go through the outbox (one only verified: never)
    frames_read: int = 0  # since it opened: what frame_rate let through
    # what is queued here is sealed and sent by ConnectionManager._flush (or its writer, while
    # the peer lags) in order: nothing ever cancels a frame half way, which would put the two
    # ends' nonces out of step, and no sender waits on a peer that does not read
    outbox: Outbox = field(default_factory=lambda: Outbox(OUTBOX))


class ConnectionManager:
    """Owns the sockets; tells its listener who came, who went and what they said."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig,
        listen_port: int,
        listener: ConnectionListener,
        local: LocalRecord,
    ) -> None:
        self._identity = identity
        self._config = config
        self._local = local
        self._listen_port = listen_port
        self._listener = listener
        self._refusals = LogOnce(log, max_topics=1024)
        # made once: the Noise static key and the identity's signature over it serve every handshake
        self.credentials = handshake.Credentials(
            identity,
            namespace=config.namespace,
            keyring=config.keyring(),
            trusted=config.trusted_peers,
        )
        self._current: dict[PeerId, Connection] = {}
        self._reported: dict[PeerId, Address] = {}
        self._grace: dict[PeerId, float] = {}
        self._tg: TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's, while it runs
        self._alarm: asyncio.TimerHandle | None = None  # when the timer rings next
        self._alarm_due = math.inf  # the same, on time.monotonic's clock
        self._timer_failed: anyio.Event | None = None  # set when a tick raised ...
        self._timer_error: Exception | None = None  # ... this
        self.liveness = Liveness(
            identity.peer_id,
            interval=config.heartbeat_interval,
            dead_after=config.dead_after,
            wake=self._wake_timer,
            probe_silent_after=None if config.max_connections is None else PROBE_SILENT_AFTER,
        )

    def connected(self) -> Mapping[PeerId, Address]:
        """The peers reported connected, with the address in use (a copy)."""
        return dict(self._reported)

    def round_trips(self) -> Mapping[PeerId, float]:
        """The round-trip time to each connected peer, in seconds: the heartbeats' (smoothed)
        once measured, else the TCP connect of a connection we dialed (a copy)."""
        trips = {
            pid: c.clock.rtt if c.clock.rtt is not None else c.rtt
            for pid, c in self._current.items()
        }
        return {pid: rtt for pid, rtt in trips.items() if rtt is not None}

    def records(self) -> dict[PeerId, PeerRecord]:
        """The signed record of each connected peer (the newest it showed us)."""
        return {peer_id: conn.record for peer_id, conn in self._current.items()}

    def record(self, peer_id: PeerId) -> PeerRecord | None:
        """The signed record of one connected peer (None if it is not connected)."""
        conn = self._current.get(peer_id)
        return conn.record if conn is not None else None

    def update_record(self, record: PeerRecord) -> bool:
        """A connected peer sent its own newer record (new metadata, same boot); True if kept."""
        conn = self._current.get(record.peer_id)
        if conn is None or record.boot != conn.record.boot or not record.newer_than(conn.record):
            return False
        conn.record = record
        return True

    def last_heard(self) -> Mapping[PeerId, float]:
        """Seconds since the last frame from each connected peer."""
        now = time.monotonic()
        return {
            pid: max(now - c.clock.heard_at, 0.0)
            for pid, c in self._current.items()
            if pid in self._reported
        }

    def frames_read(self) -> Mapping[PeerId, int]:
        """Frames read from each peer with an open connection (reported or not), since it
        opened: what the frame-rate bound let through."""
        return {pid: c.frames_read for pid, c in self._current.items()}

    # -- entry points ----------------------------------------------------------------------

    def start(self, tg: TaskGroup) -> None:
        self._tg = tg
        tg.start_soon(self._timer)

    async def handle_inbound(self, stream: SocketStream, ticket: Ticket | None = None) -> None:
        """A listener callback: whatever a peer sends, at worst its own connection is closed.

        ``ticket`` (from the inbound gate) counts the connection while it handshakes."""
        try:
            await self._inbound(stream, ticket)
        except Exception:  # the listener outlives every connection
            log.exception("internal error on an inbound connection; closed it")
            await anyio.aclose_forcefully(stream)

    async def _inbound(self, stream: SocketStream, ticket: Ticket | None) -> None:
        try:
            peer: Any = stream.extra(anyio.abc.SocketAttribute.remote_address)
            remote = Address(host=str(peer[0]), port=int(peer[1]))
        except Exception:  # noqa: BLE001 - a socket without a peer address is just closed
            await stream.aclose()
            return
        try:
            session, record = await self._handshake(stream, dialing=False)
        except (handshake.HandshakeError, TimeoutError, *_STREAM_ERRORS) as exc:
            self._twin_seen(exc)
            level = logging.DEBUG if isinstance(exc, handshake.SelfConnection) else logging.WARNING
            # once per source and reason: a peer that retries is not a new line every round
            self._refusals.log(
                level,
                remote.host,
                "refused inbound connection from %s: %s",
                remote.host,
                self._reason(exc),
            )
            await stream.aclose()
            return
        if ticket is not None:
            ticket.handshake_done()
        if session.verify_only:  # it learned who we are; there is nothing to keep
            log.debug("verified by %s from %s", session.peer_id, remote)
            self._listener.authenticated(record, None)
            await self._close(self._connection(session, record, remote, session.peer_id), VERIFIED)
            return
        address = Address(host=remote.host, port=session.listen_port or 1)
        await self._keep(self._connection(session, record, address, session.peer_id))

    def _connection(
        self,
        session: Session,
        record: PeerRecord,
        address: Address,
        dialer: PeerId,
        rtt: float | None = None,
    ) -> Connection:
        frames = TokenBucket(self._config.frame_rate, self._config.frame_burst)
        return Connection(session.peer_id, address, dialer, session, record, frames, rtt=rtt)

    def _twin_seen(self, exc: BaseException) -> None:
        """We reached our own peer id: ourselves, or (another boot id) a node with our key."""
        if not isinstance(exc, handshake.SelfConnection):
            return
        try:
            record = records.verify(exc.record, self._identity.peer_id)
        except records.RecordError:
            return
        if record.boot != self._local.boot:
            self._listener.twin(record)

    async def dial(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        """Connect and handshake (DialError if not); the connection lives on in its own task."""
        opened = await self.open(address, expected, timeout)
        self.adopt(opened)
        return opened.peer_id

    async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
        """Connect and handshake (DialError if not), not kept yet: :meth:`adopt` or
        :meth:`discard` the result."""
        session, record, rtt = await self._open(address, expected, timeout, verify_only=False)
        return Opened(session.peer_id, address, session, rtt, record)

    def adopt(self, opened: Opened) -> None:
        """Keep a connection :meth:`open` made (it replaces one to the same peer this node
        dialed before: the move to a better path)."""
        assert self._tg is not None, "start() first"
        conn = self._connection(
            opened.channel, opened.record, opened.address, self._identity.peer_id,
            opened.connect_seconds,
        )  # fmt: skip
        self._tg.start_soon(self._keep, conn)

    @staticmethod
    async def discard(opened: Opened) -> None:
        """Close a connection :meth:`open` made that another dial beat."""
        await opened.channel.aclose()

    async def verify(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        """Handshake to learn who answers at ``address`` (its proven id, its record), then close:
        discover-only (``connect = false``). DialError if not."""
        assert self._tg is not None, "start() first"
        session, record, _ = await self._open(address, expected, timeout, verify_only=True)
        self._listener.authenticated(record, None)  # its record (its metadata) is known now
        self._tg.start_soon(session.aclose)  # the caller learns the id before anything else runs
        return session.peer_id

    async def _open(
        self, address: Address, expected: PeerId | None, timeout: float, *, verify_only: bool
    ) -> tuple[Session, PeerRecord, float]:
        """Connect and handshake; the session, the peer's record and the TCP connect's round
        trip (DialError)."""
        started = time.monotonic()
        try:
            with anyio.fail_after(timeout):
                stream = await transport.connect(address.host, address.port)
            rtt = time.monotonic() - started  # SYN to SYN-ACK: one round trip
        except TimeoutError:
            raise DialError(f"no answer within {timeout:g} s") from None
        except OSError as exc:
            raise DialError(_connect_failure(exc)) from None
        try:
            session, record = await self._handshake(
                stream, dialing=True, expected=expected, verify_only=verify_only
            )
        except (handshake.HandshakeError, TimeoutError, *_STREAM_ERRORS) as exc:
            await anyio.aclose_forcefully(stream)
            self._twin_seen(exc)
            if isinstance(exc, handshake.SelfConnection):
                self._listener.identified(address, self._identity.peer_id)
                raise DialedSelf("this is this node's own address") from None
            # a refusal is an answer (namespace, version, id); silence may be a restart
            refused = isinstance(exc, handshake.HandshakeError) and not isinstance(
                exc, handshake.Unanswered
            )
            theirs = exc.theirs if isinstance(exc, handshake.IncompatibleVersion) else None
            raise DialError(self._reason(exc), refused=refused, incompatible=theirs) from None
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        self._listener.identified(address, session.peer_id)
        return session, record, rtt

    async def send(self, peer_id: PeerId, message: dict[str, Any]) -> bool:
        """Send ``message`` to a connected peer; False if it is not connected or that failed."""
        conn = self._current.get(peer_id)
        return conn is not None and await self._try_send(conn, message)

    async def _try_send(self, conn: Connection, message: dict[str, Any]) -> bool:
        return self._send(conn, message)

    def suspect(self, peer_id: PeerId, reporter: PeerId) -> None:
        """``reporter`` says ``peer_id`` is gone: our own probe of it decides (liveness's
        handling of a peer's suspicion: at most one probe per report window)."""
        self._act(self.liveness.on_frame(reporter, liveness.suspect_frame(peer_id)))

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Send ``message`` on every current connection; a failing one is left to its keeper."""
        for conn in list(self._current.values()):
            self._send(conn, message)

    def _send(self, conn: Connection, message: dict[str, Any]) -> bool:
        """Queue ``message`` for the connection's next flush (never waits); False if it is
        going."""
        try:
            if not self._queue(conn, message):
                return False  # closing
        except OverflowError:
            conn.close_reason = conn.close_reason or f"not reading ({OUTBOX} frames queued)"
            conn.scope.cancel()
            return False
        self.liveness.sent(conn.peer_id)
        return True

    def _queue(self, conn: Connection, message: dict[str, Any]) -> bool:
        """``message`` in the outbox, and a flush asked for if none is due (False if closed;
        ``OverflowError`` past ``OUTBOX``)."""
        outbox = conn.outbox
        if not outbox.put(message):
            return False
        if not outbox.busy:
            outbox.busy = True
            asyncio.get_running_loop().call_soon(self._flush, conn)
        return True

    def _flush(self, conn: Connection) -> None:
        """What was queued for ``conn`` in this pass of the loop, sealed and written in one
        step; if the peer lags, a writer task takes over until the queue is empty."""
        try:
            batch = conn.outbox.take()
            if batch and not conn.channel.write_now(batch):
                assert self._tg is not None
                self._tg.start_soon(self._write, conn, batch)
                return
        except _STREAM_ERRORS:
            self._end_writes(conn, "connection lost")
        except Exception:  # a bug on one connection ends that connection only
            log.exception("internal error writing to %s; closed the connection", conn.peer_id)
            self._end_writes(conn, "internal error")
        else:
            conn.outbox.idle()

    async def _write(self, conn: Connection, batch: list[dict[str, Any]]) -> None:
        """The connection's writer while its peer lags: frames go out whole and in order, what
        was queued meanwhile in one write; it ends when nothing is queued."""
        try:
            while batch:
                await conn.channel.send_all(batch)
                batch = conn.outbox.take()
        except _STREAM_ERRORS:
            self._end_writes(conn, "connection lost")
        except BaseException:
            conn.outbox.finish()
            raise
        else:
            conn.outbox.idle()

    @staticmethod
    def _end_writes(conn: Connection, reason: str) -> None:
        conn.close_reason = conn.close_reason or reason
        conn.scope.cancel()
        conn.outbox.finish()

    async def close(self, peer_id: PeerId, reason: str) -> None:
        """End the connection to ``peer_id`` (saying ``reason`` in the bye), if there is one.
        A peer between two connections (its old one closed as a duplicate, the one it kept not
        here yet) is reported down now, for ``reason``: its next connection comes up as a new
        one. (Closing nothing, a trim left it reported, and when the connection it kept came it
        was no new connection, so no trim followed: a node stayed past ``max_connections``.)"""
        conn = self._current.get(peer_id)
        if conn is not None:
            await self._close(conn, reason)
        elif self._grace.pop(peer_id, None) is not None:
            self._report_down(peer_id, reason)

    async def close_all(self, reason: str = SHUTDOWN) -> None:
        with anyio.move_on_after(1.0, shield=True):
            for conn in list(self._current.values()):
                await self._close(conn, reason)

    # -- internals ---------------------------------------------------------------------------

    async def _handshake(
        self,
        stream: SocketStream,
        *,
        dialing: bool,
        expected: PeerId | None = None,
        verify_only: bool = False,
    ) -> tuple[Session, PeerRecord]:
        """The sealed session to whoever is at the other end, proven to be that peer id, and
        the peer's own signed record (which must be its own: a HandshakeError if not)."""
        _keep_alive(stream)
        mine = self._local.encode()
        with anyio.fail_after(self._config.handshake_timeout):
            if not dialing:
                session = await handshake.respond(stream, self.credentials, local_record=mine)
            else:
                session = await handshake.initiate(
                    stream,
                    self.credentials,
                    local_record=mine,
                    listen_port=self._listen_port,
                    expected=expected,
                    verify_only=verify_only,
                )
        try:
            return session, records.verify(session.remote_record, session.peer_id)
        except records.RecordError as exc:
            await session.aclose()
            raise handshake.HandshakeError(f"bad record: {str(exc)[:200]}") from None

    def _reason(self, exc: BaseException) -> str:
        """Why a handshake failed, in words (never empty)."""
        if isinstance(exc, TimeoutError):
            return f"no handshake within {self._config.handshake_timeout:g} s"
        if isinstance(exc, wire.ProtocolError):
            return f"bad frame: {exc}"
        if isinstance(exc, _STREAM_ERRORS):
            return "closed during handshake"
        return str(exc) or type(exc).__name__

    def _admit(self, conn: Connection) -> bool:
        existing = self._current.get(conn.peer_id)
        if existing is not None and not self._prefer(conn, existing):
            return False
        self._current[conn.peer_id] = conn
        self._grace.pop(conn.peer_id, None)
        self._act(self.liveness.add(conn.peer_id))
        if existing is not None:
            existing.close_reason = DUPLICATE
            if self._tg is not None:
                self._tg.start_soon(self._close, existing, DUPLICATE)
        reported = self._reported.get(conn.peer_id)
        self._reported[conn.peer_id] = conn.address
        if reported is None:
            self._listener.connection_up(conn.peer_id, conn.address)
        elif reported != conn.address:
            log.info("%s moved from %s to %s", conn.peer_id, reported, conn.address)
            self._listener.path_changed(conn.peer_id, reported, conn.address)
        return True

    def _prefer(self, new: Connection, old: Connection) -> bool:
        """Both ends pick the same survivor. Dialed by different ends: the one the lower peer id
        dialed. Dialed by the same end: the newer, for that end dials a connected peer only to
        move it to a better path (or because it saw the old one die)."""
        if new.dialer != old.dialer:
            return min(new.dialer, old.dialer) == new.dialer
        return True

    async def _keep(self, conn: Connection) -> None:
        existing = self._current.get(conn.peer_id)
        first = self._listener.authenticated(conn.record, existing.record if existing else None)
        conn.writing = True
        if first is not None:  # said before anything else, even before a "duplicate" bye
            self._send(conn, first)  # first in the queue
        reason = "closed"
        try:
            with conn.scope:
                if not self._admit(conn):
                    await self._close(conn, DUPLICATE)
                    return
                reason = await self._receive_until_gone(conn)
        except Exception:  # a bug on one connection ends that connection only
            log.exception("internal error on the connection to %s; closed it", conn.peer_id)
            reason = "internal error"
        finally:
            conn.outbox.close()
            await conn.channel.aclose()
            self._release(conn, conn.close_reason or reason)

    async def _receive_until_gone(self, conn: Connection) -> str:
        """Frames until the peer leaves or the socket fails; silence is the timer's to judge."""
        while True:
            await conn.frames.take()  # past frame_rate the peer waits (TCP pushes back on it)
            try:
                message = await conn.channel.receive()
                conn.frames_read += 1
            except wire.ProtocolError as exc:  # a forged or damaged frame: say so, once
                log.warning("closed the connection to %s: bad frame: %s", conn.peer_id, exc)
                return f"bad frame: {exc}"
            except _STREAM_ERRORS:
                return "connection lost"
            kind = message["type"]
            conn.clock.heard(message)
            if kind == "bye":
                said = shown(str(message.get("reason", "")), MAX_BYE_REASON)
                return DUPLICATE if said == DUPLICATE else closed_by_peer(said)
            if self._current.get(conn.peer_id) is conn:  # else a duplicate on its way out
                self.liveness.heard(conn.peer_id)
                if kind in liveness.FRAME_TYPES:
                    self._act(self.liveness.on_frame(conn.peer_id, message))
                else:
                    self._listener.received(conn.peer_id, conn.address, message)
            # not held while the next frame is awaited: on a quiet connection the last message
            # (often a batch of records, ~20 KiB at 50 members) would live on for each peer
            del message

    async def _timer(self) -> None:
        """The node's one timer: liveness (heartbeats, suspicions) and the duplicates' grace.

        An alarm of the event loop (``call_at``), not a task that sleeps: a wake-up runs the
        tick and nothing else (no task switch, no cancel scope, no new sleep), and moving it is
        a cancel and a new alarm. It rings when something is due: a batch of heartbeats, sooner
        a silence or a probe's wait running out, or a duplicate's grace ending; with nothing
        due (no peer) it is not set until woken (a peer added or reported, a grace begun).
        This task holds its lifetime, and raises what a tick raised (a bug ends the node, as
        it would in a task)."""
        self.liveness.start()
        failed = anyio.Event()
        self._loop, self._timer_failed = asyncio.get_running_loop(), failed  # anyio's asyncio
        self._set_alarm()
        try:
            await failed.wait()
            assert self._timer_error is not None
            raise self._timer_error
        finally:
            if self._alarm is not None:
                self._alarm.cancel()
            self._loop = self._alarm = None

    def _ring(self) -> None:
        """The alarm: what is due now, then the alarm for what is due next."""
        self._alarm = None
        try:
            now = time.monotonic()
            if self.liveness.next_due <= now:
                self._act(self.liveness.tick(now))
            self._sweep_grace(now)
        except Exception as exc:  # noqa: BLE001 - raised in the timer's task instead
            self._timer_error = exc
            if self._timer_failed is not None:
                self._timer_failed.set()
            return
        self._set_alarm()

    def _set_alarm(self) -> None:
        if self._loop is None:
            return  # not started, or stopped
        due = min(self.liveness.next_due, min(self._grace.values(), default=math.inf))
        if self._alarm is not None:
            if self._alarm_due == due:
                return
            self._alarm.cancel()
            self._alarm = None
        if due < math.inf:  # the loop's clock need not be time.monotonic (uvloop's is not)
            when = self._loop.time() + (due - time.monotonic())
            self._alarm, self._alarm_due = self._loop.call_at(when, self._ring), due

    def _wake_timer(self) -> None:
        self._set_alarm()

    def _act(self, actions: liveness.Actions) -> None:
        """Send what liveness asks for (queued: never waiting on a stuck peer); drop the dead."""
        for peer_id, reason in actions.dead:
            conn = self._current.get(peer_id)
            if conn is not None and self._tg is not None:
                conn.close_reason = conn.close_reason or reason
                self._tg.start_soon(self._close, conn, reason)
        for peer_id, frame in actions.send:
            conn = self._current.get(peer_id)
            if conn is not None:
                self._send(conn, conn.clock.stamp(frame))

    async def _close(self, conn: Connection, reason: str) -> None:
        """Say ``bye`` after whatever is queued (at most 0.5 s), then close."""
        conn.close_reason = conn.close_reason or reason
        bye = {"type": "bye", "reason": reason}
        with anyio.move_on_after(0.5, shield=True):
            if conn.writing:
                with contextlib.suppress(OverflowError):
                    self._queue(conn, bye)
                conn.outbox.close()
                await conn.outbox.wait_finished()
            else:  # nothing else is sending on it, and it closes right after
                with contextlib.suppress(TimeoutError, *_STREAM_ERRORS):
                    await conn.channel.send(bye, 0.5)
        conn.outbox.close()
        conn.scope.cancel()
        await conn.channel.aclose()

    def _release(self, conn: Connection, reason: str) -> None:
        if self._current.get(conn.peer_id) is not conn:
            return  # a duplicate that lost; the peer is still connected through the winner
        del self._current[conn.peer_id]
        self._act(self.liveness.remove(conn.peer_id))  # queued before the loss is reported
        if reason == DUPLICATE:
            # the peer kept another connection of ours; give it time to arrive before we say "down"
            self._grace[conn.peer_id] = time.monotonic() + self._config.handshake_timeout
            self._wake_timer()  # its end is due before anything else, perhaps
            return
        self._report_down(conn.peer_id, reason)

    def _report_down(self, peer_id: PeerId, reason: str) -> None:
        if self._reported.pop(peer_id, None) is not None:
            self._listener.connection_down(peer_id, reason)

    def _sweep_grace(self, now: float) -> None:
        for peer_id, deadline in list(self._grace.items()):
            if deadline <= now:
                del self._grace[peer_id]
                if peer_id not in self._current:
                    self._report_down(peer_id, "connection lost (duplicate not replaced)")


def _keep_alive(stream: SocketStream) -> None:
    """Kernel keepalive on the socket: a link that died without a word is noticed at no cost."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
