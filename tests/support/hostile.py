"""Helpers for the hostile-input suite: one real node kept alive across hypothesis examples.

:class:`LiveNode` runs a real in-process node (``exo_discovery_core.testing.run_node``) in a
background event loop (an anyio blocking portal), so a synchronous ``@given`` test can send one
hostile input per example to the same node and check it afterwards. If an input kills the node,
the next example starts a fresh one (so hypothesis shrinks against a live node) and the crash is
kept in ``crashes``; leaving the ``with`` block raises if any crash happened. Everything listens
and connects on 127.0.0.1 only, and everything started here is closed on exit, pass or fail.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn

import anyio
from anyio.abc import ByteReceiveStream, SocketStream
from anyio.from_thread import BlockingPortal, start_blocking_portal

from exo_discovery_core import Address, PeerCandidate, handshake, noise, session, wire
from exo_discovery_core.clusterkey import Keyring
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.node import Node
from exo_discovery_core.peertable import Peer
from exo_discovery_core.records import LocalRecord
from exo_discovery_core.session import Session
from exo_discovery_core.testing import next_event, run_node
from tests.support.fake_headscale import FakeHeadscale
from tests.support.static import Static

LOOPBACK = "127.0.0.1"
CLOSED_ERRORS = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,  # ConnectionResetError, BrokenPipeError
)
# handshake_timeout 5 s (the default): a connection closed well before it was refused by the node
# for what it sent, not timed out. dead_after is long so an idle authenticated client stays up.
HOSTILE_NODE: dict[str, Any] = {
    "handshake_timeout": 5.0,
    "dead_after": 30.0,
    "redial_max": 2.0,
    "plugin_restart_max": 0.5,
}
FAST_PEER: dict[str, Any] = {"handshake_timeout": 2.0, "redial_max": 0.5}
# A stranger's own writes: the node's bounds are what a test measures, never how soon the test's
# loop (the node's loop too) gets round to a write on a busy machine, where 1 s stalls happen.
WRITE_WITHIN = 10.0


def frame(body: bytes) -> bytes:
    """A 2-byte length-prefixed frame around ``body`` (whatever it is), as v2 frames go."""
    return session.frame(body)


def json_body(value: Any) -> bytes:
    """``value`` as JSON bytes; NaN/Infinity allowed (Python's json reads them back)."""
    return json.dumps(value, separators=(",", ":")).encode()


def json_frame(value: Any) -> bytes:
    return frame(json_body(value))


PREAMBLE = bytes([len(handshake.PROTOCOL)]) + handshake.PROTOCOL.encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def read_until_closed(stream: ByteReceiveStream, timeout: float) -> bytes:
    """Everything the node sends until it closes the connection; TimeoutError if it does not."""
    data = bytearray()
    with anyio.fail_after(timeout):
        while True:
            try:
                data += await stream.receive()
            except CLOSED_ERRORS:
                return bytes(data)


async def send_and_expect_close(
    port: int, payload: bytes, *, half_close: bool, timeout: float
) -> float:
    """Send ``payload`` (then EOF if ``half_close``); seconds until the node closed the socket."""
    started = anyio.current_time()
    stream = await anyio.connect_tcp(LOOPBACK, port)
    async with stream:
        try:
            if payload:
                await stream.send(payload)
            if half_close:
                await stream.send_eof()
        except CLOSED_ERRORS:
            pass  # already refused; the read below sees the close
        await read_until_closed(stream, timeout)
    return anyio.current_time() - started


@dataclass
class HalfHandshake:
    """A client that went as far as message 2: it knows who answered and may write message 3."""

    stream: SocketStream
    state: noise.HandshakeState
    peer_id: PeerId


async def open_handshake(port: int, key: bytes | None = None) -> HalfHandshake:
    """Preamble and message 1 (under ``key``), then the node's proof, checked as the core does."""
    client = handshake.Credentials(Identity.generate(), namespace="exo")
    stream = await anyio.connect_tcp(LOOPBACK, port)
    try:
        state = client.noise(initiator=True, key=key)
        await stream.send(PREAMBLE + frame(state.write_message()))
        receive = session.Reader(stream)
        if await receive.receive_exactly(len(PREAMBLE)) != PREAMBLE:
            raise wire.ProtocolError("not our preamble")
        proof = handshake.open_payload(state, await session.read_frame(receive, 65535))
        peer_id = handshake.verify_proof(proof, state.rs)
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise
    return HalfHandshake(stream, state, peer_id)


async def probe(
    port: int, expected: PeerId, key: bytes | None = None, timeout: float = 3.0
) -> bool:
    """True if the node accepts a connection and proves its peer id in message 2."""
    try:
        with anyio.fail_after(timeout):
            half = await open_handshake(port, key)
            await half.stream.aclose()
    except (TimeoutError, wire.ProtocolError, handshake.HandshakeError, *CLOSED_ERRORS):
        return False
    return half.peer_id == expected


async def authenticate(
    port: int, identity: Identity, namespace: str = "exo", keyring: Keyring | None = None
) -> Session:
    """A client that passes the real handshake (the core's own code on the client side)."""
    credentials = handshake.Credentials(identity, namespace=namespace, keyring=keyring)
    record = LocalRecord(identity, None, protocol=handshake.PROTOCOL, addresses=(), meta={})
    stream = await anyio.connect_tcp(LOOPBACK, port)
    try:
        with anyio.fail_after(5):
            return await handshake.initiate(stream, credentials, local_record=record.encode())
    except BaseException:
        await anyio.aclose_forcefully(stream)
        raise


def same_key(node: Node) -> dict[str, Any]:
    """``[node]`` settings that give another node ``node``'s cluster key."""
    if node.config.cluster_key_file is not None:
        return {"cluster_key_file": str(node.config.cluster_key_file)}
    if node.config.cluster_key is not None:
        return {"cluster_key": node.config.cluster_key.get_secret_value()}
    return {}


async def real_peer_connects(node: Node, within: float = 5.0) -> float:
    """Start a second real node that dials ``node``; seconds until both report the connection.

    The probe stops afterwards and ``node`` is waited on until it has dropped the connection, so
    its connection table is as before.
    """
    started = anyio.current_time()
    async with node.events() as node_events:
        plugin = Static(PeerCandidate.at(LOOPBACK, node.port, str(node.peer_id)))
        async with (
            run_node({"static": plugin}, node={**FAST_PEER, **same_key(node)}) as probe,
            probe.events() as events,
        ):
            await next_event(events, "connected", timeout=within, peer_id=node.peer_id)
            await next_event(node_events, "connected", timeout=within, peer_id=probe.peer_id)
            elapsed = anyio.current_time() - started
        await next_event(node_events, "disconnected", timeout=within, peer_id=probe.peer_id)
    return elapsed


@dataclass
class NodeState:
    """What must not change when a hostile connection comes and goes."""

    table: dict[str, Peer]
    connected: dict[PeerId, Address]


class LiveNode(AbstractContextManager["LiveNode"]):
    """A real node in a background loop, reused across examples; see the module docstring."""

    def __init__(
        self,
        node: Mapping[str, Any] | None = None,
        plugins: Mapping[str, object] | None = None,
        plugin_config: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.settings = {**HOSTILE_NODE, **(node or {})}
        self.plugins = dict(plugins or {})
        self.plugin_config = dict(plugin_config or {})
        self.crashes: list[str] = []
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._ctx: AbstractContextManager[Node] | None = None
        self.node: Node

    @property
    def portal(self) -> BlockingPortal:
        assert self._portal_cm is not None
        return self._portal

    def __enter__(self) -> LiveNode:
        self._portal_cm = start_blocking_portal("asyncio")
        self._portal = self._portal_cm.__enter__()
        try:
            self._start()
        except BaseException:
            self._portal_cm.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._portal_cm is not None
        try:
            self._stop()
        finally:
            self._portal_cm.__exit__(None, None, None)
        if exc_type is None and self.crashes:
            raise AssertionError("the node crashed:\n" + "\n".join(self.crashes))

    def _start(self) -> None:
        cm = run_node(self.plugins, node=self.settings, plugin_config=self.plugin_config)
        self._ctx = self.portal.wrap_async_context_manager(cm)
        self.node = self._ctx.__enter__()

    def _stop(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is None:
            return
        try:
            ctx.__exit__(None, None, None)
        except BaseException as exc:  # noqa: BLE001 - a crash of the node is what we record
            self.crashes.append("".join(traceback.format_exception(exc)))

    # -- per-example checks ----------------------------------------------------------------

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` (sync or async) in the node's loop."""
        return self.portal.call(func, *args)

    @property
    def keyring(self) -> Keyring:
        return self.node.config.keyring()

    def alive(self) -> bool:
        result: bool = self.call(probe, self.node.port, self.node.peer_id, self.keyring.primary)
        return result

    def fail(self, message: str) -> NoReturn:
        """Raise AssertionError(``message``), with the node's crash if it died (it is restarted)."""
        if not self.alive():
            self._stop()
            self._start()
            if self.crashes:
                message += "; the node crashed:\n" + self.crashes[-1]
        raise AssertionError(message)

    def check_alive(self, message: str = "the node stopped serving after this input") -> None:
        if not self.alive():
            self.fail(message)

    def ensure_alive(self) -> None:
        """Before an example: a node killed by the previous example is replaced (and recorded)."""
        if not self.alive():
            self._stop()
            if not self.crashes:
                self.crashes.append("the node stopped serving without raising")
            self._start()

    def snapshot(self) -> NodeState:
        """The node's state, read in its loop (``state`` from the test's thread)."""
        node = self.node
        return NodeState(
            table=dict(node.table.merged()), connected=dict(node.connections.connected())
        )

    def state(self) -> NodeState:
        result: NodeState = self.call(self.snapshot)
        return result

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        async def wait() -> bool:
            with anyio.move_on_after(timeout):
                while not predicate():  # noqa: ASYNC110 - a plain predicate, no event to wait on
                    await anyio.sleep(0.01)
                return True
            return False

        result: bool = self.call(wait)
        return result

    def real_peer_connects(self, within: float = 5.0) -> float:
        elapsed: float = self.call(real_peer_connects, self.node, within)
        return elapsed


# -- listeners that record who connects -------------------------------------------------------


@dataclass
class Listener:
    """A TCP listener on 127.0.0.1 in a thread: accepts, counts and closes each connection."""

    accepted: int = 0
    _sock: socket.socket = field(default_factory=socket.socket)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    def __enter__(self) -> Listener:
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(512)
        self._sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sock.close()


@contextmanager
def listeners(count: int) -> Iterator[list[Listener]]:
    started: list[Listener] = []
    try:
        for _ in range(count):
            started.append(Listener().__enter__())
        yield started
    finally:
        for listener in started:
            listener.__exit__(None, None, None)


# -- a Headscale fake that serves any body ------------------------------------------------------


@dataclass
class ScriptedHeadscale(FakeHeadscale):
    """The fake Headscale of ``tests.support.fake_headscale``, answering ``body`` as the list.

    It reuses the fake's ``huge`` fault path (a 200 with whatever ``huge_answer`` returns):
    with ``body`` set, that is ``body``; with ``body`` None, the fake's real 10 MB answer.
    """

    body: bytes | None = None

    def __enter__(self) -> ScriptedHeadscale:
        self.start()
        return self

    def huge_answer(self, size: int = 10 * 1024 * 1024) -> bytes:
        body = self.body
        return body if body is not None else super().huge_answer(size)


class Stranger:
    """An authenticated peer under the test's control, for real node processes: it passes the
    real handshake, then sends what the test says and keeps its sessions up with heartbeats
    (a node drops a silent peer, and with it everything that peer said)."""

    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity or Identity.generate()
        self.sessions: list[Session] = []

    async def connect(self, port: int, namespace: str = "exo") -> Session:
        connected = await authenticate(port, self.identity, namespace)
        self.sessions.append(connected)
        return connected

    async def send(self, to: Session, *messages: dict[str, Any]) -> None:
        for message in messages:
            await to.send(message, 5.0)

    async def keep_alive(self, interval: float = 0.5) -> None:
        """Ping every session until cancelled (run it in a task group)."""
        while True:
            for each in list(self.sessions):
                try:
                    await each.send({"type": "ping"}, 5.0)
                except (TimeoutError, *CLOSED_ERRORS):
                    self.sessions.remove(each)
            await anyio.sleep(interval)

    async def aclose(self) -> None:
        for each in self.sessions:
            await each.aclose()
        self.sessions.clear()


def json_values(max_leaves: int = 12) -> Any:
    """Any JSON value (NaN and infinities too: Python's json reads them), nested a little."""
    from hypothesis import strategies as st

    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )
