"""Handshake: connect + the v2 handshake vs a bare TCP connect + close, one event loop.

Both listeners run in this process on 127.0.0.1, in the same anyio (asyncio) loop as the dialer:
the handshake listener does what the node's ``ConnectionManager.handle_inbound`` does
(``handshake.respond`` under ``fail_after``, with the node's one ``Credentials``), the plain one
accepts and closes. The dialer times ``connect_tcp`` (+ ``handshake.initiate``, which returns
once the responder's sealed accept arrived) + ``aclose``; the kinds are interleaved in blocks so
drift (CPU frequency, other load) hits all alike. Measured without and with a cluster key
(Noise XX and XXpsk0). Both ends run on one core, so "handshakes per second" counts the work of
dialer *and* listener.

Every measured handshake is a first meeting: the proofs seen are forgotten before each dial, so
both Ed25519 signatures are verified and both peer ids made, as between two nodes that never met.
A node remembers proofs it has verified (a peer's static key lives as long as its process), so a
reconnection costs less: the "known peer" row measures that, beside the same TCP reference.
The "no cryptography" row replays the byte counts of a real keyed handshake through the same
streams and the same kind of listener: what the connect and the three messages cost alone.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from exo_discovery_core import clusterkey, handshake, wire
from exo_discovery_core.clusterkey import Keyring
from exo_discovery_core.identity import Identity
from exo_discovery_core.session import Reader

from .common import Row, median, quantile

NAME = "handshake"
BUDGET_S = 120.0
ITERATIONS = 500
BLOCK = 50
NAMESPACE = "bench"
TARGET_RATIO = 3.0

Dial = Callable[[], Awaitable[None]]


async def _serve_handshake(stream: anyio.abc.SocketStream, server: handshake.Credentials) -> None:
    try:
        with anyio.fail_after(5):
            await handshake.respond(stream, server)
    except (handshake.HandshakeError, wire.ProtocolError, TimeoutError, OSError,
            anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):  # fmt: skip
        pass
    finally:
        await anyio.aclose_forcefully(stream)


async def _serve_plain(stream: anyio.abc.SocketStream) -> None:
    await anyio.aclose_forcefully(stream)


async def _serve_exchange(stream: anyio.abc.SocketStream, sizes: tuple[int, int, int]) -> None:
    """The responder's side of a handshake without its work: read, answer, read, close."""
    first, answer, third = sizes
    try:
        with anyio.fail_after(5):
            receive = Reader(stream)
            await receive.receive_exactly(first)
            await stream.send(bytes(answer))
            await receive.receive_exactly(third)
    except (TimeoutError, OSError, anyio.EndOfStream, anyio.IncompleteRead,
            anyio.BrokenResourceError):  # fmt: skip
        pass
    finally:
        await anyio.aclose_forcefully(stream)


class _Recorder(anyio.abc.ByteStream):
    """A dialer's stream that counts what one real handshake sends and receives."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner
        self.sent: list[int] = []
        self.received = 0

    async def send(self, item: bytes) -> None:
        self.sent.append(len(item))
        await self.inner.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        self.received += len(data)
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Measured:
    def __init__(self) -> None:
        self.plain: list[float] = []
        self.open: list[float] = []  # no cluster key: Noise XX
        self.keyed: list[float] = []  # a cluster key: Noise XXpsk0
        self.known: list[float] = []  # a cluster key, a peer whose proof was seen before
        self.bare: list[float] = []  # the keyed handshake's byte counts, no cryptography
        self.sizes = (0, 0, 0)  # message 1 with the preamble, message 2 with it, message 3
        self.per_second = 0.0
        self.cpu_each = 0.0
        self.profile = ""


async def _measure(profile: bool) -> _Measured:
    keyring = Keyring((clusterkey.generate(),))
    server_id, client_id = Identity.generate(), Identity.generate()
    servers = [handshake.Credentials(server_id, namespace=NAMESPACE, keyring=k)
               for k in (Keyring(), keyring)]  # fmt: skip
    clients = [handshake.Credentials(client_id, namespace=NAMESPACE, keyring=k)
               for k in (Keyring(), keyring)]  # fmt: skip
    listeners = [await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
                 for _ in range(4)]  # fmt: skip
    plain_port, bare_port, *hs_ports = (int(lst.extra(anyio.abc.SocketAttribute.local_port))
                                        for lst in listeners)  # fmt: skip

    def dialer(which: int, first_meeting: bool = True) -> Dial:
        async def dial_handshake() -> None:
            if first_meeting:  # both signatures verified, both peer ids made
                handshake.forget_proofs()
            stream = await anyio.connect_tcp("127.0.0.1", hs_ports[which])
            try:
                await handshake.initiate(stream, clients[which], expected=server_id.peer_id)
            finally:
                await stream.aclose()

        return dial_handshake

    async def dial_plain() -> None:
        stream = await anyio.connect_tcp("127.0.0.1", plain_port)
        await stream.aclose()

    async def recorded_sizes() -> tuple[int, int, int]:
        recorder = _Recorder(await anyio.connect_tcp("127.0.0.1", hs_ports[1]))
        try:
            await handshake.initiate(recorder, clients[1], expected=server_id.peer_id)
        finally:
            await recorder.aclose()
        first, third = recorder.sent
        return first, recorder.received, third

    async def dial_bare() -> None:
        first, answer, third = result.sizes
        stream = await anyio.connect_tcp("127.0.0.1", bare_port)
        try:
            await stream.send(bytes(first))
            await Reader(stream).receive_exactly(answer)
            await stream.send(bytes(third))
        finally:
            await stream.aclose()

    async def timed(dial: Dial, n: int, out: list[float]) -> None:
        for _ in range(n):
            t0 = time.perf_counter()
            await dial()
            out.append(time.perf_counter() - t0)

    result = _Measured()
    open_dial, keyed_dial, known_dial = dialer(0), dialer(1), dialer(1, first_meeting=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listeners[0].serve, _serve_plain)
        for listener, server in zip(listeners[2:], servers, strict=True):
            tg.start_soon(listener.serve, lambda s, c=server: _serve_handshake(s, c))
        result.sizes = await recorded_sizes()
        tg.start_soon(listeners[1].serve, lambda s: _serve_exchange(s, result.sizes))
        for dial in (open_dial, keyed_dial, dial_plain, dial_bare):  # warm-up (first connections)
            await timed(dial, BLOCK, [])
        for _ in range(ITERATIONS // BLOCK):
            await timed(dial_plain, BLOCK, result.plain)
            await timed(open_dial, BLOCK, result.open)
            await timed(keyed_dial, BLOCK, result.keyed)
            await timed(known_dial, BLOCK, result.known)
            await timed(dial_bare, BLOCK, result.bare)
        # throughput: back to back, wall and CPU time of this (single-threaded) process
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await timed(keyed_dial, ITERATIONS, [])
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        result.per_second, result.cpu_each = ITERATIONS / wall, cpu / ITERATIONS
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await timed(keyed_dial, 300, [])
            profiler.disable()
            result.profile = _profile_report(profiler, 300)
        tg.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    return result


def _profile_report(profiler: cProfile.Profile, n: int) -> str:
    """Where a handshake's time goes: own time per function (µs per handshake), top entries."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    raw = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        rows.append((tottime, cumtime, f"{_short(filename)}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [f"cProfile of {n} handshakes (dialer + listener), {total / n * 1e6:.0f} µs each "
             "under the profiler; own time per handshake:"]  # fmt: skip
    for tottime, _cumtime, where in rows[:14]:
        lines.append(f"    {tottime / n * 1e6:7.1f} µs  {tottime / total:5.1%}  {where}")
    groups = {
        "X25519 + ChaCha20-Poly1305 + Ed25519 (cryptography)": ("x25519", "ed25519", "aead"),
        "HMAC + hashes (hashlib)": ("hmac", "_hashlib", "openssl_"),
        "json": ("json/",),
        "asyncio event loop + selectors": ("asyncio/", "selectors.py", "select.epoll"),
        "anyio streams, cancel scopes": ("anyio/",),
        "socket syscalls": ("_socket.socket",),
        "noise + handshake + session (exo_discovery_core)": ("exo_discovery_core/",),
    }
    for label, needles in groups.items():
        own = sum(r[0] for r in rows if any(n in r[2] for n in needles))
        lines.append(f"    group {label}: {own / n * 1e6:.1f} µs ({own / total:.1%})")
    return "\n".join(lines)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def run() -> list[Row]:
    measured = anyio.run(_measure, False)
    tcp_med = median(measured.plain)
    profile = ""
    if max(median(measured.open), median(measured.keyed)) > TARGET_RATIO * tcp_med:
        profile = anyio.run(_measure, True).profile
    note = (f"{len(measured.plain)} iterations each, interleaved in blocks of {BLOCK}; "
            "asyncio, 127.0.0.1")  # fmt: skip
    rows = []
    for label, times in (
        ("no cluster key (XX)", measured.open),
        ("cluster key (XXpsk0)", measured.keyed),
    ):
        rows += [
            Row(NAME, f"connect + v2 handshake, {label}, median", median(times), "s",
                "TCP connect + close, median", tcp_med, max_ratio=TARGET_RATIO, note=note,
                extra={"profile": profile} if profile and "psk" in label else {}),
            Row(NAME, f"connect + v2 handshake, {label}, p99", quantile(times, 0.99), "s",
                "TCP connect + close, p99", quantile(measured.plain, 0.99),
                max_ratio=TARGET_RATIO),
        ]  # fmt: skip
    rows.append(Row(NAME, "connect + v2 handshake, cluster key, a known peer (proof seen), median",
                    median(measured.known), "s", "TCP connect + close, median", tcp_med))  # fmt: skip
    first, answer, third = measured.sizes
    rows.append(Row(NAME, f"connect + the same three messages ({first}, {answer}, {third} bytes), "
                    "no cryptography, median", median(measured.bare), "s",
                    "TCP connect + close, median", tcp_med))  # fmt: skip
    rows.append(Row(NAME, "handshakes per second, one core (both ends), cluster key",
                    measured.per_second, "/s",
                    note=f"CPU {measured.cpu_each * 1e6:.0f} µs per handshake, dialer + listener"))  # fmt: skip
    return rows
