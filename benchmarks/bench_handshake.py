"""Handshake: connect + the v2 handshake vs a bare TCP connect, as two nodes meet.

**The target rows: a node process.** The listener is a real node (``exo-discovery run`` on
127.0.0.1, its own process and its own ``ConnectionManager`` accept path: the inbound gate,
the limits, the handshake deadline, its signed record, the check of ours). The dialer is a
``ConnectionManager`` here doing what a node's dial does (``ConnectionManager.verify``:
connect, handshake, the node's signed record checked), with ``verify_only``, so the node does
not count it as a member. Every measured dial is a first meeting on both ends: each is made by a
fresh identity with a fresh Noise static key and record, which the node has never seen, and
the dialer forgets the node's proof and id before each one (``handshake.forget_proofs``). The
reference is a bare TCP connect (the node's own ``transport.connect``) to the SAME node, interleaved with the handshakes in
blocks. Neither timing includes the close (a dial that joins keeps its connection; ``verify``
returns once it knows who answered): both close after the clock stopped. The node runs on core
1 and the dialer on core 0 (``taskset``; without two cores they are not pinned): two nodes meet
from two machines, and left alone the scheduler wakes the node on the dialer's core, where its
work on message 3 runs inside the dialer's send. So the node's work after message 3 (our proof
and record) is off the dialer's clock, as its accept and close are in the reference; and what
the reference leaves out, the two wake-ups of another process per round trip, is in the
handshake. The "three messages to a process of their own" row measures that part alone: the
same byte counts to a process that reads, answers and reads, on the node's core, no
cryptography. The notes say where a first meeting's time goes on the dialer's clock (one dial's
steps, stamped) and how much CPU the node spent per first meeting.

**The one-process rows: both ends on one event loop.** The listener does with the handshake
what the node's accept path does (``handshake.respond`` under ``fail_after``, one
``Credentials``, then the dialer's signed record checked); the plain listener accepts and
closes. Every socket is the node's own (:mod:`exo_discovery_core.transport`). The dialer times
``connect`` + ``handshake.initiate`` + the listener's record checked + ``aclose``, the
reference ``connect`` + ``aclose``. Both ends share one core, so
these rows show the CPU of dialer *and* listener per handshake, and each dial also carries the
listener's last work for the one before it. First meetings as above (a fixed pair of
identities whose proofs and ids are forgotten before each dial); the "known peer" row is a
reconnection (a node remembers proofs it verified: a peer's static key lives as long as its
process); the "no cryptography" row replays a real keyed handshake's byte counts through the
same streams and the same kind of listener.

Both settings are measured without and with a cluster key (Noise XX and XXpsk0).
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import SecretStr

from exo_discovery_core import clusterkey, handshake, records, transport, wire
from exo_discovery_core.clusterkey import Keyring
from exo_discovery_core.config import NodeConfig
from exo_discovery_core.connections import ConnectionManager
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.records import LocalRecord, PeerRecord
from exo_discovery_core.session import reader

from .common import REPO, Fleet, Row, clean_env, cpu_seconds, end_process, median, quantile, track

NAME = "handshake"
BUDGET_S = 120.0
ITERATIONS = 500
BLOCK = 50
NAMESPACE = "bench"
TARGET_RATIO = 3.0

Dial = Callable[[], Awaitable[None]]


async def _serve_handshake(
    stream: anyio.abc.SocketStream, server: handshake.Credentials, record: bytes
) -> None:
    """What the node's accept path does with the handshake: respond, check the peer's record."""
    try:
        with anyio.fail_after(5):
            session = await handshake.respond(stream, server, local_record=record)
        records.verify(session.remote_record, session.peer_id)
    except (handshake.HandshakeError, records.RecordError, wire.ProtocolError, TimeoutError,
            OSError, anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):  # fmt: skip
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
            receive = reader(stream)
            await receive.receive_exactly(first)
            await stream.send(bytes(answer))
            await receive.receive_exactly(third)
    except (TimeoutError, OSError, anyio.EndOfStream, anyio.IncompleteRead,
            anyio.BrokenResourceError):  # fmt: skip
        pass
    finally:
        await anyio.aclose_forcefully(stream)


class _Recorder(anyio.abc.ByteStream):
    """A dialer's stream that counts (and stamps) what one real handshake sends and receives."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner
        self.sent: list[int] = []
        self.received = 0
        self.sending_at: list[float] = []  # when each send was called
        self.sent_at: list[float] = []  # ... and returned
        self.received_at: list[float] = []

    async def send(self, item: bytes) -> None:
        self.sent.append(len(item))
        self.sending_at.append(time.perf_counter())
        await self.inner.send(item)
        self.sent_at.append(time.perf_counter())

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self.inner.receive(max_bytes)
        self.received += len(data)
        self.received_at.append(time.perf_counter())
        return data

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- the target rows: a node process ------------------------------------------------------------

NODE_ITERATIONS = 500
NODE_NAMESPACE = "exo-bench"
HANDSHAKE_TIMEOUT = 5.0
STAMPED = 10  # dials with each step stamped, after each block of first meetings
# Each end on a core of its own, as on two machines: left to itself the scheduler wakes the
# listener on the dialer's core, and its work on message 3 runs inside the dialer's send.
PINNED = len(os.sched_getaffinity(0)) >= 2 and shutil.which("taskset") is not None
DIALER_CORE = 0
LISTENER_CORE = ["taskset", "-c", "1"] if PINNED else []
PHASES = ("TCP connect", "message 1 made", "message 1 sent (the send call)",
          "waiting for message 2 (the node's part)", "message 2 read, message 3 made",
          "message 3 sent (the send call)", "the node's record verified")  # fmt: skip


# The node's side of a handshake without its work (_serve_exchange), in a process of its own:
# what the connect and the three messages cost between two processes (argv: the three sizes).
EXCHANGE_PROCESS = (
    "import sys; from benchmarks.bench_handshake import serve_exchange; serve_exchange()"
)


def serve_exchange() -> None:
    """The exchange process: prints its port, then serves until it is ended."""
    first, answer, third = map(int, sys.argv[1:4])

    async def main() -> None:
        listener = await transport.listen("127.0.0.1", 0)
        print(listener.extra(anyio.abc.SocketAttribute.local_port), flush=True)
        await listener.serve(lambda s: _serve_exchange(s, (first, answer, third)))

    anyio.run(main)


class _Unheard:
    """The dialer's ConnectionListener: a benchmark keeps nothing it hears."""

    def identified(self, address: Address, peer_id: PeerId) -> None: ...
    def connection_up(self, peer_id: PeerId, address: Address) -> None: ...
    def path_changed(self, peer_id: PeerId, old: Address, new: Address) -> None: ...
    def connection_down(self, peer_id: PeerId, reason: str) -> None: ...
    def received(self, peer_id: PeerId, address: Address, message: dict[str, Any]) -> None: ...
    def authenticated(self, record: PeerRecord, live: PeerRecord | None) -> None: ...
    def twin(self, record: PeerRecord) -> None: ...


@dataclass
class _NodeMeasured:
    """One node's figures: dials to it, TCP and handshake, interleaved."""

    tcp: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)  # first meetings, ConnectionManager.verify
    bare: list[float] = field(default_factory=list)  # the keyed sizes, no cryptography
    memory: list[float] = field(default_factory=list)  # a keyed first meeting, no socket
    node_cpu: float = 0.0  # the node's CPU seconds during the handshake blocks
    node_cpu_tcp: float = 0.0  # ... and during the TCP blocks
    phases: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PHASES})
    profile: str = ""


def _stranger(config: NodeConfig) -> ConnectionManager:
    """A dialer the node never met: a fresh identity, so a fresh proof, Noise key and record."""
    identity = Identity.generate()
    record = LocalRecord(identity, None, protocol=handshake.PROTOCOL, addresses=(), meta={})
    return ConnectionManager(identity, config, 0, _Unheard(), record)


async def _first_meeting(manager: ConnectionManager, address: Address) -> float:
    """Seconds of one node dial that only verifies (the close runs after the clock stops)."""
    handshake.forget_proofs()  # the node's proof is verified again: a first meeting here too
    async with anyio.create_task_group() as tg:
        manager.start(tg)
        await anyio.lowlevel.checkpoint()  # the manager's timer starts before the clock does
        started = time.perf_counter()
        await manager.verify(address, None, HANDSHAKE_TIMEOUT)
        elapsed = time.perf_counter() - started
        tg.cancel_scope.cancel()  # its timer (the close verify started still closes)
    return elapsed


def _fresh_dialer(config: NodeConfig) -> tuple[handshake.Credentials, bytes]:
    """What a node never met proves and sends: fresh credentials and its signed record."""
    identity = Identity.generate()
    record = LocalRecord(identity, None, protocol=handshake.PROTOCOL, addresses=(), meta={})
    credentials = handshake.Credentials(
        identity, namespace=config.namespace, keyring=config.keyring()
    )
    return credentials, record.encode()


async def _tcp_connect(address: Address) -> float:
    started = time.perf_counter()
    stream = await transport.connect(address.host, address.port)
    elapsed = time.perf_counter() - started
    await stream.aclose()
    return elapsed


async def _bare_exchange(port: int, sizes: tuple[int, int, int]) -> float:
    """The three messages' bytes to a listener that only reads, answers and reads; seconds
    until the last one is sent (the close follows), as a first meeting is timed."""
    first, answer, third = sizes
    started = time.perf_counter()
    stream = await transport.connect("127.0.0.1", port)
    try:
        await stream.send(bytes(first))
        await reader(stream).receive_exactly(answer)
        await stream.send(bytes(third))
        elapsed = time.perf_counter() - started
    finally:
        await stream.aclose()
    return elapsed


async def _phases(
    config: NodeConfig, address: Address, out: dict[str, list[float]]
) -> tuple[int, int, int]:
    """Where one first meeting's time goes on the dialer's clock: the dial's steps, stamped."""
    credentials, mine = _fresh_dialer(config)
    handshake.forget_proofs()
    started = time.perf_counter()
    stream = _Recorder(await transport.connect(address.host, address.port))
    connected = time.perf_counter()
    try:
        session = await handshake.initiate(stream, credentials, local_record=mine, verify_only=True)
        records.verify(session.remote_record, session.peer_id)
        done = time.perf_counter()
    finally:
        await stream.aclose()
    (first_sending, third_sending), (first_sent, third_sent) = stream.sending_at, stream.sent_at
    answered = stream.received_at[0]
    steps = (started, connected, first_sending, first_sent, answered, third_sending, third_sent,
             done)  # fmt: skip
    for phase, begin, end in zip(PHASES, steps[:-1], steps[1:], strict=True):
        out[phase].append(end - begin)
    first, third = stream.sent
    return first, stream.received, third


class _Pipe(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe: a handshake with no socket under it."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send, self._receive = send, receive

    async def send(self, item: bytes) -> None:
        await self._send.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self._receive.receive()

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def _pipe() -> tuple[_Pipe, _Pipe]:
    there, here = anyio.create_memory_object_stream[bytes](16)
    back, answers = anyio.create_memory_object_stream[bytes](16)
    return _Pipe(there, answers), _Pipe(back, here)


async def _in_memory(config: NodeConfig, node: handshake.Credentials, node_record: bytes) -> float:
    """A first meeting with no socket: the dialer's work and the node's answer (its work on
    message 3 runs after the clock stopped, as with a node process)."""
    credentials, mine = _fresh_dialer(config)
    handshake.forget_proofs()
    dialer_end, node_end = _pipe()

    async def answer() -> None:
        session = await handshake.respond(node_end, node, local_record=node_record)
        records.verify(session.remote_record, session.peer_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(answer)
        started = time.perf_counter()
        session = await handshake.initiate(
            dialer_end, credentials, local_record=mine, verify_only=True
        )
        records.verify(session.remote_record, session.peer_id)
        elapsed = time.perf_counter() - started
    return elapsed


async def _measure_nodes(
    nodes: list[tuple[int, int, NodeConfig]],
    exchange: tuple[int, tuple[int, int, int]],
    iterations: int,
    profile: bool,
) -> list[_NodeMeasured]:
    """Dial each node (port, pid, the dialer's config for it) in interleaved blocks, and the
    exchange process (port, sizes) and the in-memory stand-in with the last node's config.

    No pause between dials, although the node may still be at work on the last meeting
    (message 3) when the next one starts: a dialer that paused starts its next dial on a cold
    core, which slowed the TCP connect here as much as the handshake (135 -> 170-290 µs)."""
    results = [_NodeMeasured() for _ in nodes]
    addresses = [Address(host="127.0.0.1", port=port) for port, _pid, _config in nodes]
    keyed = nodes[-1][2]
    stand_in = Identity.generate()  # the node, for the in-memory first meetings
    stand_in_record = LocalRecord(stand_in, None, protocol=handshake.PROTOCOL, addresses=(),
                                  meta={}).encode()  # fmt: skip
    stand_in_credentials = handshake.Credentials(
        stand_in, namespace=keyed.namespace, keyring=keyed.keyring()
    )

    async def dial(which: int, kind: str) -> float:
        if kind == "handshake":
            return await _first_meeting(_stranger(nodes[which][2]), addresses[which])
        if kind == "tcp":
            return await _tcp_connect(addresses[which])
        if kind == "bare":
            return await _bare_exchange(*exchange)
        return await _in_memory(keyed, stand_in_credentials, stand_in_record)

    async def block(which: int, kind: str, keep: bool) -> None:
        """BLOCK dials of one kind, back to back (both nodes share one core: dialing them in
        turn would put one's work on message 3 beside the other's answer)."""
        result, (_port, pid, _config) = results[which], nodes[which]
        series = {"tcp": result.tcp, "handshake": result.first,
                  "bare": result.bare, "memory": result.memory}[kind]  # fmt: skip
        cpu = cpu_seconds(pid)
        for _ in range(BLOCK):
            elapsed = await dial(which, kind)
            if keep:
                series.append(elapsed)
        if keep and kind == "handshake":
            result.node_cpu += cpu_seconds(pid) - cpu
        elif keep and kind == "tcp":
            result.node_cpu_tcp += cpu_seconds(pid) - cpu

    last = len(nodes) - 1
    for which in range(len(nodes)):  # warm-up: first connections, first imports
        for kind in ("tcp", "handshake", "bare", "memory"):
            await block(which, kind, False)
    for _ in range(iterations // BLOCK):
        for which, (result, address) in enumerate(zip(results, addresses, strict=True)):
            await block(which, "tcp", True)
            await block(which, "handshake", True)
            for _ in range(STAMPED):
                await _phases(nodes[which][2], address, result.phases)
        await block(last, "bare", True)
        await block(last, "memory", True)
    if profile:  # the dialer's side of first meetings with the keyed node
        profiler = cProfile.Profile()
        managers = [(_stranger(config), address) for _ in range(150)
                    for address, (_port, _pid, config) in zip(addresses, nodes, strict=True)]  # fmt: skip
        profiler.enable()
        for manager, address in managers:
            await _first_meeting(manager, address)
        profiler.disable()
        results[-1].profile = _profile_report(profiler, len(managers), "the dialer's side of "
                                              "first meetings with the two nodes")  # fmt: skip
    return results


def _exchange_process(sizes: tuple[int, int, int]) -> tuple[subprocess.Popen[str], int]:
    proc = track(
        subprocess.Popen(
            [*LISTENER_CORE, sys.executable, "-c", EXCHANGE_PROCESS, *map(str, sizes)],
            stdout=subprocess.PIPE, env=clean_env(), text=True,
        )
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def _node_rows() -> tuple[list[Row], bool]:
    """The target rows; and whether a target was missed."""
    key = clusterkey.encode(clusterkey.generate())
    exchange: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="exo-bench-dialer-") as tmp, Fleet(NAME) as fleet:
        open_node = fleet.start("open", "--namespace", NODE_NAMESPACE, prefix=LISTENER_CORE)
        keyed_node = fleet.start("keyed", "--namespace", NODE_NAMESPACE, prefix=LISTENER_CORE,
                                 env={"EXO_DISCOVERY_CLUSTER_KEY": key})  # fmt: skip
        for node in (open_node, keyed_node):
            node.wait_started(30)
        dialer = NodeConfig(namespace=NODE_NAMESPACE, state_dir=Path(tmp))
        keyed = NodeConfig(
            namespace=NODE_NAMESPACE, state_dir=Path(tmp), cluster_key=SecretStr(key)
        )
        nodes = [(open_node.port, open_node.pid, dialer), (keyed_node.port, keyed_node.pid, keyed)]
        address = Address(host="127.0.0.1", port=keyed_node.port)
        unused: dict[str, list[float]] = {phase: [] for phase in PHASES}
        sizes = anyio.run(_phases, keyed, address, unused)  # what a first meeting sends
        cores = os.sched_getaffinity(0)
        try:
            if PINNED:
                os.sched_setaffinity(0, {DIALER_CORE})
            exchange, exchange_port = _exchange_process(sizes)
            measured = anyio.run(_measure_nodes, nodes, (exchange_port, sizes),
                                 NODE_ITERATIONS, False)  # fmt: skip
            missed = any(median(m.first) > TARGET_RATIO * median(m.tcp) for m in measured)
            if missed:
                measured[-1].profile = anyio.run(
                    _measure_nodes, nodes, (exchange_port, sizes), BLOCK, True
                )[-1].profile
        finally:
            os.sched_setaffinity(0, cores)
            if exchange is not None:
                end_process(exchange)
        complaints = [line for node in (open_node, keyed_node) for line in node.complaints()
                      if "not an exo-discovery client" not in line]  # fmt: skip
    if complaints:
        raise RuntimeError(f"a node complained: {complaints[0][:200]}")
    rows = []
    load = os.getloadavg()[0]
    for label, result in zip(("no cluster key (XX)", "cluster key (XXpsk0)"), measured,
                             strict=True):  # fmt: skip
        count = len(result.first)
        phases = "; ".join(f"{phase} {median(times) * 1e6:.0f} µs"
                           for phase, times in result.phases.items())  # fmt: skip
        note = (f"{count} first meetings and {len(result.tcp)} TCP connects, interleaved in "
                f"blocks of {BLOCK}, each dial by a fresh identity; the node's CPU per first "
                f"meeting {result.node_cpu / count * 1e6:.0f} µs (per TCP connect "
                f"{result.node_cpu_tcp / len(result.tcp) * 1e6:.0f} µs); "
                f"{'dialer on core 0, node on core 1' if PINNED else 'not pinned to cores'}; "
                "on the dialer's clock "
                f"(medians of {len(result.phases[PHASES[0]])} stamped dials): {phases}; "
                f"load average {load:.1f} after")  # fmt: skip
        extra = {"profile": result.profile} if result.profile else {}
        rows += [
            Row(NAME, f"connect + v2 handshake to a node process, {label}, first meeting, median",
                median(result.first), "s", "TCP connect to the same node, median",
                median(result.tcp), max_ratio=TARGET_RATIO, note=note, extra=extra),
            Row(NAME, f"connect + v2 handshake to a node process, {label}, first meeting, p99",
                quantile(result.first, 0.99), "s", "TCP connect to the same node, p99",
                quantile(result.tcp, 0.99), max_ratio=TARGET_RATIO),
        ]  # fmt: skip
    first, answer, third = sizes
    rows.append(Row(NAME, f"connect + the same three messages ({first}, {answer}, {third} bytes) "
                    "to a process of their own, no cryptography, median",
                    median(measured[-1].bare), "s", "TCP connect to the keyed node, median",
                    median(measured[-1].tcp),
                    note="the node's side without its work: read, answer, read, close"))  # fmt: skip
    rows.append(Row(NAME, "a first meeting in memory, no socket (cluster key): the dialer's work "
                    "and the node's answer, median", median(measured[-1].memory), "s",
                    "TCP connect to the keyed node, median", median(measured[-1].tcp),
                    note="the cryptography and the handshake code on the dialer's clock, "
                    "nothing else: both ends in this process over an in-memory pipe"))  # fmt: skip
    return rows, missed


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
    server_record, client_record = (
        LocalRecord(i, None, protocol=handshake.PROTOCOL, addresses=(), meta={}).encode()
        for i in (server_id, client_id)
    )
    listeners = [await transport.listen("127.0.0.1", 0)
                 for _ in range(4)]  # fmt: skip
    plain_port, bare_port, *hs_ports = (int(lst.extra(anyio.abc.SocketAttribute.local_port))
                                        for lst in listeners)  # fmt: skip

    def dialer(which: int, first_meeting: bool = True) -> Dial:
        async def dial_handshake() -> None:
            if first_meeting:  # both signatures verified, both peer ids made
                handshake.forget_proofs()
            stream = await transport.connect("127.0.0.1", hs_ports[which])
            try:
                session = await handshake.initiate(
                    stream, clients[which], local_record=client_record, expected=server_id.peer_id
                )
                records.verify(session.remote_record, session.peer_id)
            finally:
                await stream.aclose()

        return dial_handshake

    async def dial_plain() -> None:
        stream = await transport.connect("127.0.0.1", plain_port)
        await stream.aclose()

    async def recorded_sizes() -> tuple[int, int, int]:
        recorder = _Recorder(await transport.connect("127.0.0.1", hs_ports[1]))
        try:
            await handshake.initiate(
                recorder, clients[1], local_record=client_record, expected=server_id.peer_id
            )
        finally:
            await recorder.aclose()
        first, third = recorder.sent
        return first, recorder.received, third

    async def dial_bare() -> None:  # timed with its close, as the one-process rows are
        await _bare_exchange(bare_port, result.sizes)

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
            tg.start_soon(listener.serve,
                          lambda s, c=server: _serve_handshake(s, c, server_record))  # fmt: skip
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
            result.profile = _profile_report(profiler, 300, "dialer + listener, one process")
        tg.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()
    return result


def _profile_report(profiler: cProfile.Profile, n: int, what: str) -> str:
    """Where a handshake's time goes: own time per function (µs per handshake), top entries."""
    stats = pstats.Stats(profiler, stream=io.StringIO())
    raw = stats.stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, func), (_cc, _nc, tottime, cumtime, _callers) in raw.items():
        rows.append((tottime, cumtime, f"{_short(filename)}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [f"cProfile of {n} handshakes ({what}), {total / n * 1e6:.0f} µs each under the "
             "profiler; own time per handshake:"]  # fmt: skip
    for tottime, _cumtime, where in rows[:14]:
        lines.append(f"    {tottime / n * 1e6:7.1f} µs  {tottime / total:5.1%}  {where}")
    groups = {
        "X25519 + ChaCha20-Poly1305 + Ed25519 (libsodium via PyNaCl)": (
            "nacl/",
            "_sodium",
            "_cffi_backend",
        ),
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
    for marker in ("site-packages/", "lib/python3.11/", f"{REPO}/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def run() -> list[Row]:
    rows, missed = _node_rows()
    measured = anyio.run(_measure, False)
    tcp_med = median(measured.plain)
    profile = anyio.run(_measure, True).profile if missed else ""
    note = (f"{len(measured.plain)} iterations each, interleaved in blocks of {BLOCK}; both "
            "ends in this process, one asyncio loop, 127.0.0.1; each side's signed record checked")  # fmt: skip
    reference = "TCP connect + close, one process, median"
    for label, times in (
        ("no cluster key (XX)", measured.open),
        ("cluster key (XXpsk0)", measured.keyed),
    ):
        rows.append(Row(NAME, f"one process: connect + v2 handshake + close, {label}, median",
                        median(times), "s", reference, tcp_med, note=note,
                        extra={"one-process profile": profile} if profile and "psk" in label
                        else {}))  # fmt: skip
    rows.append(Row(NAME, "one process: cluster key, a known peer (proof seen), median",
                    median(measured.known), "s", reference, tcp_med))  # fmt: skip
    first, answer, third = measured.sizes
    rows.append(Row(NAME, f"one process: the same three messages ({first}, {answer}, {third} "
                    "bytes), no cryptography, median", median(measured.bare), "s",
                    reference, tcp_med))  # fmt: skip
    rows.append(Row(NAME, "handshakes per second, one core (both ends), cluster key",
                    measured.per_second, "/s",
                    note=f"CPU {measured.cpu_each * 1e6:.0f} µs per handshake, dialer + listener"))  # fmt: skip
    return rows
