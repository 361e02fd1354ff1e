"""The v2 handshake and session over real loopback sockets, both ends in this process.

What each side learns, what each refusal says (naming both sides' values), that a responder
says nothing at all to a client without its cluster key, key rotation, and that every sealed
frame that was modified, replayed, reordered, truncated or inserted closes the session.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import anyio.abc
import pytest

from exo_discovery_core import clusterkey, handshake, wire
from exo_discovery_core.clusterkey import Keyring
from exo_discovery_core.handshake import Credentials, HandshakeError, IncompatibleVersion
from exo_discovery_core.identity import Identity
from exo_discovery_core.session import Session

pytestmark = pytest.mark.anyio
OLD, NEW, OTHER = clusterkey.generate(), clusterkey.generate(), clusterkey.generate()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def creds(*keys: bytes, namespace: str = "exo", **kwargs: object) -> Credentials:
    return Credentials(Identity.generate(), namespace=namespace, keyring=Keyring(keys), **kwargs)  # type: ignore[arg-type]


@dataclass
class Outcome:
    session: Session | None = None
    error: BaseException | None = None
    sent: bytes = b""  # what the responder's socket wrote, byte for byte
    done: anyio.Event = field(default_factory=anyio.Event)


class Wrapped(anyio.abc.ByteStream):
    """A socket stream passed through, for subclasses that watch or hold back what is sent."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        self.inner = inner

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class Recording(Wrapped):
    """Keeps a copy of everything sent on the stream."""

    def __init__(self, inner: anyio.abc.ByteStream, out: Outcome) -> None:
        super().__init__(inner)
        self.out = out

    async def send(self, item: bytes) -> None:
        self.out.sent += item
        await self.inner.send(item)


@asynccontextmanager
async def responder(
    server: Credentials, record: bytes = b""
) -> AsyncIterator[tuple[int, list[Outcome]]]:
    """A listener answering each connection with ``handshake.respond``."""
    outcomes: list[Outcome] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))

    async def serve(stream: anyio.abc.SocketStream) -> None:
        out = Outcome()
        outcomes.append(out)
        try:
            with anyio.fail_after(5):
                out.session = await handshake.respond(
                    Recording(stream, out), server, local_record=record
                )
        except (HandshakeError, wire.ProtocolError, anyio.IncompleteRead) as exc:
            out.error = exc
            await stream.aclose()
        finally:
            out.done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield port, outcomes
        finally:
            for out in outcomes:
                if out.session is not None:
                    await out.session.aclose()
            tg.cancel_scope.cancel()
    await listener.aclose()


async def dial(port: int, client: Credentials, **kwargs: object) -> Session:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    try:
        with anyio.fail_after(5):
            return await handshake.initiate(stream, client, **kwargs)  # type: ignore[arg-type]
    except BaseException:
        await stream.aclose()
        raise


async def server_outcome(outcomes: list[Outcome]) -> Outcome:
    with anyio.fail_after(5):
        while not outcomes:  # noqa: ASYNC110 - the listener appends when it accepts
            await anyio.sleep(0.01)
        await outcomes[-1].done.wait()
    return outcomes[-1]


@pytest.mark.parametrize("keys", [(), (OLD,)], ids=["no key", "cluster key"])
async def test_both_sides_learn_the_proven_peer_id_and_record(keys: tuple[bytes, ...]) -> None:
    server, client = creds(*keys), creds(*keys)
    async with responder(server, record=b"server record") as (port, outcomes):
        session = await dial(port, client, local_record=b"client record", listen_port=4242)
        theirs = await server_outcome(outcomes)
        assert theirs.session is not None
        assert session.peer_id == server.peer_id and theirs.session.peer_id == client.peer_id
        assert session.remote_record == b"server record"
        assert theirs.session.remote_record == b"client record"
        assert theirs.session.listen_port == 4242
        await session.send({"type": "ping", "n": 1}, 1)
        assert await theirs.session.receive() == {"type": "ping", "n": 1}
        await theirs.session.send({"type": "peers", "peers": []}, 1)
        assert await session.receive() == {"type": "peers", "peers": []}
        await session.aclose()


@pytest.mark.parametrize(
    ("server_keys", "client_keys", "server_says"),
    [
        ((OLD,), (), "the peer has no cluster key"),
        ((OLD,), (OTHER,), "the peer's cluster key is not one of ours"),
        ((), (OLD,), "the peer has a cluster key and we have none"),
    ],
    ids=["client without key", "client with another key", "server without key"],
)
async def test_without_the_key_the_responder_sends_not_one_byte(
    server_keys: tuple[bytes, ...], client_keys: tuple[bytes, ...], server_says: str
) -> None:
    server, client = creds(*server_keys), creds(*client_keys)
    async with responder(server) as (port, outcomes):
        with pytest.raises(HandshakeError, match="closed without answering"):
            await dial(port, client)
        theirs = await server_outcome(outcomes)
        assert theirs.sent == b""
        assert isinstance(theirs.error, HandshakeError) and str(theirs.error) == server_says


async def test_rotation_install_use_remove() -> None:
    """serf's three steps: at each, every pair of nodes (old and new config) still connects."""
    installed = creds(OLD, NEW)  # step 1: new key installed, old still dials
    used = creds(NEW, OLD)  # step 2: new key dials, old still accepted
    removed = creds(NEW)  # step 3: old key removed
    for server, client in [
        (creds(OLD), installed),
        (installed, creds(OLD)),
        (installed, used),
        (used, installed),
        (used, removed),
        (removed, used),
    ]:
        async with responder(server) as (port, _):
            session = await dial(port, client)
            assert session.peer_id == server.peer_id
            await session.aclose()
    async with responder(removed) as (port, outcomes):  # a node left behind on the old key
        with pytest.raises(HandshakeError, match="closed without answering"):
            await dial(port, creds(OLD))
        assert (await server_outcome(outcomes)).sent == b""


async def test_another_version_is_answered_with_ours_and_both_are_named() -> None:
    server = creds(OLD)
    async with responder(server) as (port, outcomes):
        with pytest.raises(IncompatibleVersion) as dialer:
            await dial(port, creds(OLD, protocol="exo-discovery/3"))
        theirs = await server_outcome(outcomes)
        assert theirs.sent == b"\x0fexo-discovery/2"  # the preamble, and nothing of the node
        assert (
            str(dialer.value) == "the peer speaks exo-discovery/2, this node speaks exo-discovery/3"
        )
        assert (
            str(theirs.error) == "the peer speaks exo-discovery/3, this node speaks exo-discovery/2"
        )
    async with responder(creds(OLD, protocol="exo-discovery/3")) as (port, outcomes):
        with pytest.raises(
            IncompatibleVersion,
            match="peer speaks exo-discovery/3, this node speaks exo-discovery/2",
        ):
            await dial(port, creds(OLD))


async def test_another_namespace_is_refused_by_both_naming_both() -> None:
    async with responder(creds(OLD, namespace="blue")) as (port, outcomes):
        with pytest.raises(handshake.NamespaceMismatch) as dialer:
            await dial(port, creds(OLD, namespace="green"))
        theirs = await server_outcome(outcomes)
    assert str(dialer.value) == "namespace 'blue' is not ours ('green')"
    assert str(theirs.error) == "namespace 'green' is not ours ('blue')"
    assert b"green" not in theirs.sent and b"blue" not in theirs.sent  # it was sealed


async def test_trusted_peers_refuse_everyone_else_both_ways() -> None:
    friend, stranger = creds(), creds()
    server = creds(trusted=[friend.peer_id])
    async with responder(server) as (port, outcomes):
        await (await dial(port, friend)).aclose()
        with pytest.raises(
            HandshakeError,
            match=f"refused by {server.peer_id}: {stranger.peer_id} is not in trusted_peers",
        ):
            await dial(port, stranger)
        assert (
            str((await server_outcome(outcomes)).error)
            == f"{stranger.peer_id} is not in trusted_peers"
        )
    picky = creds(trusted=[friend.peer_id])
    async with responder(stranger) as (port, _):
        with pytest.raises(HandshakeError, match="is not in trusted_peers"):
            await dial(port, picky)


async def test_the_expected_peer_id_and_self_connections() -> None:
    server = creds()
    async with responder(server) as (port, _):
        with pytest.raises(HandshakeError, match=f"answered as {server.peer_id}, expected"):
            await dial(port, creds(), expected=creds().peer_id)
    identity = Identity.generate()  # ourselves, or a clone of our key: the records tell which
    async with responder(Credentials(identity, namespace="exo"), record=b"boot 1") as (port, out):
        with pytest.raises(handshake.SelfConnection) as dialer:
            await dial(port, Credentials(identity, namespace="exo"), local_record=b"boot 2")
        theirs = await server_outcome(out)
    assert dialer.value.record == b"boot 1"
    assert isinstance(theirs.error, handshake.SelfConnection) and theirs.error.record == b"boot 2"


async def test_a_proof_of_another_key_is_refused() -> None:
    """An impostor claims a victim's id (its key) but can only sign with its own: the responder
    refuses, sealed, and never reports it."""
    victim, impostor = Identity.generate(), Identity.generate()
    impostor.peer_id = victim.peer_id
    async with responder(creds()) as (port, outcomes):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        try:
            with pytest.raises((HandshakeError, wire.ProtocolError, anyio.IncompleteRead)):
                session = await handshake.initiate(stream, Credentials(impostor, namespace="exo"))
                await session.receive()  # a refuse it cannot read: our proof named another key
        finally:
            await stream.aclose()
        theirs = await server_outcome(outcomes)
    assert theirs.session is None
    assert str(theirs.error) == "the peer could not prove its peer id"


# -- sealed frames --------------------------------------------------------------------------


class Tap(Wrapped):
    """The client's socket; once ``armed``, what it sends is held for the test to rewrite."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        super().__init__(inner)
        self.sealed: list[bytes] = []  # frames sent, as they would have gone out
        self.armed = False

    async def send(self, item: bytes) -> None:
        if self.armed:
            self.sealed.append(item)
            return
        await self.inner.send(item)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


TAMPER = {
    "a flipped ciphertext byte": lambda f: [f[0], flip(f[1], 5)],
    "a flipped tag byte": lambda f: [f[0], flip(f[1], len(f[1]) - 1)],
    "a length one short": lambda f: [f[0], struct.pack(">H", len(f[1]) - 3) + f[1][2:]],
    "a replayed frame": lambda f: [f[0], f[0]],
    "reordered frames": lambda f: [f[1], f[0]],
    "an inserted frame": lambda f: [f[0], struct.pack(">H", 20) + b"\x00" * 20, f[1]],
    "an inserted empty frame": lambda f: [f[0], b"\x00\x00", f[1]],
    "a frame too short for a tag": lambda f: [f[0], struct.pack(">H", 3) + b"abc"],
    "a frame over the size limit": lambda f: [f[0], struct.pack(">H", 65535) + b"x" * 65535],
}


@pytest.mark.parametrize("edit", TAMPER.values(), ids=TAMPER.keys())
async def test_a_tampered_frame_ends_the_session_and_is_not_read(edit: object) -> None:
    server, client = creds(OLD), creds(OLD)
    async with responder(server) as (port, outcomes):
        raw = await anyio.connect_tcp("127.0.0.1", port)
        tap = Tap(raw)
        session = await handshake.initiate(tap, client)
        theirs = (await server_outcome(outcomes)).session
        assert theirs is not None
        tap.armed = True
        await session.send({"type": "ping", "n": 1}, 1)
        await session.send({"type": "peers", "secret": "acted on"}, 1)
        for data in edit(tap.sealed):  # type: ignore[operator]
            await raw.send(data)
        received = []
        with pytest.raises(wire.ProtocolError), anyio.fail_after(3):
            while True:
                received.append(await theirs.receive())
        assert {"type": "peers", "secret": "acted on"} not in received
        await raw.aclose()


async def test_a_truncated_frame_ends_the_session() -> None:
    server, client = creds(), creds()
    async with responder(server) as (port, outcomes):
        raw = await anyio.connect_tcp("127.0.0.1", port)
        tap = Tap(raw)
        session = await handshake.initiate(tap, client)
        theirs = (await server_outcome(outcomes)).session
        assert theirs is not None
        tap.armed = True
        await session.send({"type": "peers", "peers": []}, 1)
        await raw.send(tap.sealed[0][:-3])
        await raw.send_eof()
        with pytest.raises(anyio.IncompleteRead), anyio.fail_after(3):
            await theirs.receive()
        await raw.aclose()


async def test_a_peer_of_another_version_is_listed_as_incompatible_naming_both() -> None:
    """A real node dials a listener that answers as exo-discovery/3 would (its preamble, then
    close): the peer is listed as incompatible, not hidden, and the reason names both versions."""
    from exo_discovery_core import PeerCandidate
    from exo_discovery_core.testing import run_node
    from tests.support.static import Static

    async def newer(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(b"\x0fexo-discovery/3")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, newer)
        plugin = Static(PeerCandidate.at("127.0.0.1", port))
        async with run_node({"static": plugin}) as node:
            with anyio.fail_after(5):
                while not [v for v in node.peers() if v.state == "incompatible"]:  # noqa: ASYNC110
                    await anyio.sleep(0.02)  # the table has no event for a failed dial
            [view] = node.peers()
            assert view.last_reason is not None
            assert (
                "the peer speaks exo-discovery/3, this node speaks exo-discovery/2"
                in view.last_reason
            )
            assert view.row().state == "incompatible"
        tg.cancel_scope.cancel()
    await listener.aclose()


class Gate(Wrapped):
    """The client's socket; once ``armed``, a send waits for ``opened`` before it goes out (a
    peer that stopped reading), and ``entered`` says a send is waiting."""

    def __init__(self, inner: anyio.abc.ByteStream) -> None:
        super().__init__(inner)
        self.armed = False
        self.entered = anyio.Event()
        self.opened = anyio.Event()

    async def send(self, item: bytes) -> None:
        if self.armed:
            self.entered.set()
            await self.opened.wait()
        await self.inner.send(item)


@asynccontextmanager
async def gated_pair() -> AsyncIterator[tuple[Session, Session, Gate]]:
    server, client = creds(OLD), creds(OLD)
    async with responder(server) as (port, outcomes):
        gate = Gate(await anyio.connect_tcp("127.0.0.1", port))
        session = await handshake.initiate(gate, client)
        theirs = (await server_outcome(outcomes)).session
        assert theirs is not None
        try:
            yield session, theirs, gate
        finally:
            await session.aclose()


async def test_a_sender_cancelled_mid_write_leaves_every_later_frame_readable() -> None:
    """The frame was sealed (its nonce counted) when the caller was cancelled: it still goes
    out whole, so the two ends' nonces stay in step and the next frame opens."""
    async with gated_pair() as (session, theirs, gate):
        gate.armed = True
        async with anyio.create_task_group() as tg:
            sender = anyio.CancelScope()

            async def send() -> None:
                with sender:
                    await session.send({"type": "ping", "n": 1}, 5)

            tg.start_soon(send)
            with anyio.fail_after(5):
                await gate.entered.wait()  # sealed, and stuck in the write
            sender.cancel()
            gate.opened.set()
        await session.send({"type": "ping", "n": 2}, 5)
        with anyio.fail_after(5):
            assert await theirs.receive() == {"type": "ping", "n": 1}
            assert await theirs.receive() == {"type": "ping", "n": 2}


async def test_a_sender_cancelled_while_another_writes_seals_nothing() -> None:
    async with gated_pair() as (session, theirs, gate):
        gate.armed = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.send, {"type": "ping", "n": 1}, 5)
            with anyio.fail_after(5):
                await gate.entered.wait()  # the first send holds the session
            with anyio.move_on_after(0.05) as waiting:  # the second waits its turn: cancelled
                await session.send({"type": "ping", "n": 99}, 5)
            assert waiting.cancelled_caught
            gate.opened.set()
        await session.send({"type": "ping", "n": 2}, 5)
        with anyio.fail_after(5):
            assert await theirs.receive() == {"type": "ping", "n": 1}
            assert await theirs.receive() == {"type": "ping", "n": 2}


async def test_a_write_that_cannot_finish_in_time_closes_the_session_not_desyncs_it() -> None:
    """Part of the frame may be on the wire: the session ends, clearly, both ends."""
    async with gated_pair() as (session, theirs, gate):
        gate.armed = True
        with pytest.raises(TimeoutError, match="session closed"):
            await session.send({"type": "ping", "n": 1}, 0.2)
        with pytest.raises(anyio.ClosedResourceError):
            await session.send({"type": "ping", "n": 2}, 5)
        with pytest.raises((anyio.EndOfStream, anyio.IncompleteRead)), anyio.fail_after(5):
            await theirs.receive()


async def test_a_write_stuck_past_the_callers_own_deadline_ends_at_that_deadline() -> None:
    """Shielded from cancellation, a sealed frame's write still ends by the caller's deadline
    (a handshake's ``handshake_timeout``), not only by the send's own, longer timeout."""
    async with gated_pair() as (session, _, gate):
        gate.armed = True
        started = anyio.current_time()
        with pytest.raises(TimeoutError), anyio.fail_after(0.3):
            await session.send({"type": "ping", "n": 1}, 30)
        assert anyio.current_time() - started < 10  # the send's own 30 s did not hold it
        with pytest.raises(anyio.ClosedResourceError):
            await session.send({"type": "ping", "n": 2}, 5)
