"""What the network may cost the node: every connection, handshake, frame and dial is counted
against a limit before any work is done for it (libp2p's resource manager is the model).

- :func:`accept_forever` replaces ``listener.serve``: an accept error from the system (out of
  file descriptors, buffers or memory) pauses accepting, is logged once, and accepting resumes;
  it never ends the node.
- :class:`InboundGate` admits inbound connections: in all, per source IP, and while in the
  handshake. One over a limit is closed at once, before a byte is read.
- :class:`TokenBucket` paces what a peer can make us do: frames read per connection, dials of
  candidates we only heard of.

The limits themselves are ``[node]`` settings (``NodeConfig``); their defaults are in the README.
"""

from __future__ import annotations

import errno
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from anyio.abc import Listener, SocketListener, SocketStream, TaskGroup

from .text import logger

log = logger("exo_discovery.limits")

# What accept(2) says when the system, not the peer, is short of something: wait and retry.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# What it says about one connection that died in the queue: skip it.
CONNECTION_ERRORS = frozenset({errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM})
ACCEPT_PAUSE = 0.1  # seconds between accept attempts while the system is short
FD_RESERVE = 64  # descriptors kept free for dials, the status socket, plugins and log files


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; one token per frame or dial."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_take(self) -> bool:
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def give_back(self) -> None:
        """Return a token taken for what turned out to need no pacing (a dial whose handshake
        proved it reached the very peer it was told of)."""
        self._refill()
        self._tokens = min(self.burst, self._tokens + 1)

    def wait_time(self) -> float:
        """Seconds until a token is there (0 if one is)."""
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate)

    async def take(self) -> None:
        """Wait for a token and take it: the peer is slowed down, not served faster."""
        delay = self.wait_time()
        if delay:
            await anyio.sleep(delay)
        self._refill()
        self._tokens -= 1


def descriptor_limit() -> int | None:
    """The soft open-file limit, or None if there is none."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


@dataclass(eq=False)
class Ticket:
    """An admitted inbound connection; released when it ends, however it ends.

    While it is still in the handshake it may be evicted (``cancel`` closes it) to make room for
    a newer one: a connection that has not proven anything is the cheapest to drop."""

    gate: InboundGate
    ip: str
    handshaking: bool = True
    released: bool = False
    cancel: Callable[[], None] = lambda: None

    def handshake_done(self) -> None:
        if self.handshaking:
            self.handshaking = False
            self.gate.handshakes -= 1
            self.gate.pending.pop(self, None)

    def release(self) -> None:
        if not self.released:
            self.handshake_done()
            self.released = True
            self.gate.total -= 1
            self.gate.per_ip[self.ip] -= 1
            if not self.gate.per_ip[self.ip]:
                del self.gate.per_ip[self.ip]

    def evict(self) -> None:
        self.release()
        self.cancel()


@dataclass
class InboundGate:
    """Counts inbound connections and decides, at accept, whether one more may come in.

    At a limit, the oldest connection still in its handshake (from that IP, for the per-IP
    limit) makes room; only when every counted connection is past its handshake is the new one
    refused. So a flood of silent connections cannot keep a real peer out for a handshake
    timeout, and a connected peer is never dropped for a newcomer."""

    max_total: int
    max_per_ip: int
    max_handshakes: int
    total: int = 0
    handshakes: int = 0
    per_ip: Counter[str] = field(default_factory=Counter)
    pending: dict[Ticket, None] = field(default_factory=dict)  # in the handshake, oldest first
    refused: Counter[str] = field(default_factory=Counter)
    evicted: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        # past the open-file limit accept() fails for everyone; stay below it and refuse instead
        files = descriptor_limit()
        if files is not None:
            self.max_total = max(1, min(self.max_total, files - FD_RESERVE))

    def admit(self, ip: str) -> Ticket | str:
        """A ticket, or why the connection is refused (for the log)."""
        limits: tuple[tuple[str, Callable[[], bool], str | None], ...] = (
            ("max_inbound_connections", lambda: self.total >= self.max_total, None),
            ("max_inbound_per_ip", lambda: self.per_ip[ip] >= self.max_per_ip, ip),
            ("max_handshakes", lambda: self.handshakes >= self.max_handshakes, None),
        )
        for name, reached, of_ip in limits:
            if not reached():  # looked at after any room made for the limit before
                continue
            victim = next((t for t in self.pending if of_ip is None or t.ip == of_ip), None)
            if victim is None:
                self.refused[name] += 1
                return f"every connection counted by {name} is past its handshake"
            self.evicted[name] += 1
            victim.evict()
        self.total += 1
        self.handshakes += 1
        self.per_ip[ip] += 1
        ticket = Ticket(self, ip)
        self.pending[ticket] = None
        return ticket


def remote_ip(stream: SocketStream) -> str:
    try:
        peer: Any = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except Exception:  # noqa: BLE001 - no peer address: counted together
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) else "local"


class _OnceLog:
    """A warning when a condition starts, one line when it ends, nothing in between; and at
    most one start in ``interval`` seconds, so a condition that comes and goes is not a flood."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.since: float | None = None
        self.logged_at = -interval
        self.count = 0

    def start(self, message: str, *args: Any) -> None:
        self.count += 1
        if self.since is None:
            self.since = time.monotonic()
            if self.since - self.logged_at >= self.interval:
                self.logged_at = self.since
                log.warning(message, *args)

    def end(self, message: str) -> None:
        if self.since is not None:
            if self.logged_at == self.since:
                log.warning(message, time.monotonic() - self.since, self.count)
            self.since, self.count = None, 0


async def accept_forever(
    listener: Listener[SocketStream],
    handler: Callable[[SocketStream, Ticket | None], Awaitable[None]],
    tg: TaskGroup,
    gate: InboundGate | None = None,
) -> None:
    """Accept connections until cancelled; ``handler(stream, ticket)`` runs in ``tg``.

    A connection the gate refuses is closed before a byte is read, and counted in one log line
    per burst of refusals.
    """
    parts = cast(list[SocketListener], list(getattr(listener, "listeners", [listener])))
    if len(parts) == 1:
        await _accept_loop(parts[0], handler, tg, gate)
        return
    async with anyio.create_task_group() as inner:  # IPv4 and IPv6: one loop each
        for part in parts:
            inner.start_soon(_accept_loop, part, handler, tg, gate)


async def _accept_loop(
    listener: SocketListener,
    handler: Callable[[SocketStream, Ticket | None], Awaitable[None]],
    tg: TaskGroup,
    gate: InboundGate | None,
) -> None:
    short, refusing = _OnceLog(), _OnceLog()
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRORS:
                short.start(
                    "cannot accept connections: %s; pausing, retrying every %g s",
                    exc.strerror,
                    ACCEPT_PAUSE,
                )
                await anyio.sleep(ACCEPT_PAUSE)
            elif exc.errno not in CONNECTION_ERRORS:
                raise
            continue
        short.end("accepting connections again after %.1f s (%d failed accepts)")
        ticket = gate.admit(remote_ip(stream)) if gate is not None else None
        if isinstance(ticket, str):
            refusing.start("refusing inbound connections: %s", ticket)
            await anyio.aclose_forcefully(stream)
            continue
        refusing.end("admitting inbound connections again after %.1f s (%d refused)")
        tg.start_soon(_handle, handler, stream, ticket)


async def _handle(
    handler: Callable[[SocketStream, Ticket | None], Awaitable[None]],
    stream: SocketStream,
    ticket: Ticket | None,
) -> None:
    if ticket is not None and ticket.released:  # evicted before it even started
        await anyio.aclose_forcefully(stream)
        return
    try:
        with anyio.CancelScope() as scope:
            if ticket is not None:
                ticket.cancel = scope.cancel  # evicted while still in its handshake
            await handler(stream, ticket)
        if scope.cancelled_caught:
            await anyio.aclose_forcefully(stream)
    finally:
        if ticket is not None:
            ticket.release()
