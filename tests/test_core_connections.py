"""ConnectionManager's dials, against real loopback listeners: what counts as a refusal."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import SocketStream

from exo_discovery_core import handshake, transport
from exo_discovery_core.config import NodeConfig
from exo_discovery_core.connections import OUTBOX, Connection, ConnectionManager, DialError
from exo_discovery_core.handshake import PROTOCOL
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.records import LocalRecord
from exo_discovery_core.session import Session

pytestmark = pytest.mark.anyio


class Quiet:
    """A ConnectionListener that hears nothing worth keeping."""

    def identified(self, address: Address, peer_id: PeerId) -> None: ...
    def connection_up(self, peer_id: PeerId, address: Address) -> None: ...
    def connection_down(self, peer_id: PeerId, reason: str) -> None: ...
    def received(self, peer_id: PeerId, address: Address, message: dict[str, Any]) -> None: ...


def manager_for(config: NodeConfig) -> ConnectionManager:
    identity = Identity.generate()
    record = LocalRecord(identity, None, protocol=PROTOCOL, addresses=(), meta={})
    return ConnectionManager(identity, config, 1, Quiet(), record)


async def dial_error(serve: Any, tmp_path: Any) -> DialError:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    config = NodeConfig(namespace="exo", state_dir=tmp_path)
    manager = manager_for(config)
    async with anyio.create_task_group() as tg:
        manager.start(tg)
        tg.start_soon(listener.serve, serve)
        with pytest.raises(DialError) as failed:
            await manager.dial(Address(host="127.0.0.1", port=port), None, 5.0)
        tg.cancel_scope.cancel()
    await listener.aclose()
    return failed.value


async def test_silence_is_not_a_refusal(tmp_path: Any) -> None:
    """A node shutting down (or one whose cluster key is not ours) closes without a word: that
    must not hold a restarting peer off for the long refusal retry."""

    async def close_at_once(stream: SocketStream) -> None:
        await stream.aclose()

    error = await dial_error(close_at_once, tmp_path)
    assert "closed without answering" in str(error)
    assert not error.refused


async def test_another_version_is_a_refusal(tmp_path: Any) -> None:
    async def speak_v9(stream: SocketStream) -> None:
        await stream.send(bytes([15]) + b"exo-discovery/9")  # a length byte, then the id
        await anyio.sleep(1)
        await stream.aclose()

    error = await dial_error(speak_v9, tmp_path)
    assert error.refused and error.incompatible is not None


async def test_a_refused_source_is_logged_once_per_reason(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer retrying every 2 s with another version is one warning, not one per retry."""
    config = NodeConfig(namespace="exo", state_dir=tmp_path)
    manager = manager_for(config)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    async with anyio.create_task_group() as tg:
        manager.start(tg)
        tg.start_soon(listener.serve, manager.handle_inbound)
        for _ in range(5):
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(bytes([15]) + b"exo-discovery/9")
            with anyio.fail_after(5):
                await stream.receive()  # our preamble, then the close: refused
            await stream.aclose()
        tg.cancel_scope.cancel()
    await listener.aclose()
    refusals = [r for r in caplog.records if "refused inbound connection" in r.getMessage()]
    assert len(refusals) == 1, [r.getMessage() for r in refusals]


def test_log_once_forgets_the_oldest_topic_past_its_bound() -> None:
    import logging

    from exo_discovery_core import LogOnce

    once = LogOnce(logging.getLogger("test"), max_topics=2)
    assert once.changed("a", 1) and once.changed("b", 1) and once.changed("c", 1)
    assert once.topics() == ["b", "c"]
    assert once.changed("a", 1)  # forgotten, so news again
    assert not once.changed("c", 1)


class Downs(Quiet):
    """A ConnectionListener that keeps why each connection ended."""

    def __init__(self) -> None:
        self.down: dict[PeerId, str] = {}
        self.went = anyio.Event()

    def connection_down(self, peer_id: PeerId, reason: str) -> None:
        self.down[peer_id] = reason
        self.went.set()

    def authenticated(self, record: Any, live: Any) -> None: ...


async def _kept_peer_that_does_not_read(
    tmp_path: Any, tg: anyio.abc.TaskGroup, listener: Downs
) -> tuple[ConnectionManager, Session, Connection]:
    """A node, and a peer that made its handshake and then reads nothing: the node's kept
    connection to it (the peer's session, to read later)."""
    config = NodeConfig(namespace="exo", state_dir=tmp_path)
    node = manager_for(config)
    node._listener = listener
    listening = await transport.listen("127.0.0.1", 0)
    port = int(listening.extra(anyio.abc.SocketAttribute.local_port))
    node.start(tg)
    tg.start_soon(listening.serve, node.handle_inbound)
    peer = manager_for(config)
    stream = await transport.connect("127.0.0.1", port)
    session = await handshake.initiate(stream, peer.credentials, local_record=peer._local.encode())
    with anyio.fail_after(5):
        while peer.credentials.peer_id not in node._current:  # noqa: ASYNC110 - kept soon
            await anyio.sleep(0.01)
    return node, session, node._current[peer.credentials.peer_id]


async def _until_queued(node: ConnectionManager, conn: Connection, queued: int) -> int:
    """Send numbered frames of ~12 KiB until ``queued`` wait in the outbox; how many were sent."""
    sent = 0
    with anyio.fail_after(10):
        while len(conn.outbox) < queued:
            assert await node.send(conn.peer_id, {"type": "x", "n": sent, "pad": "p" * 12000})
            sent += 1
            await anyio.lowlevel.checkpoint()  # the flush runs
    return sent


async def test_frames_queued_while_the_peer_lags_go_out_whole_and_in_order(tmp_path: Any) -> None:
    """No task writes for a connection's life: a flush hands each burst to the socket at once,
    and while the peer lags a writer task takes over. What it queued meanwhile reaches the peer
    whole and in order once the peer reads (each frame opens only under the next nonce)."""
    async with anyio.create_task_group() as tg:
        node, session, conn = await _kept_peer_that_does_not_read(tmp_path, tg, Downs())
        assert not conn.outbox.busy  # nothing queued: no writer
        sent = await _until_queued(node, conn, 5)
        assert conn.outbox.busy  # the writer, waiting on the peer
        with anyio.fail_after(10):
            numbers = []
            while len(numbers) < sent:
                message = await session.receive()
                if message["type"] == "x":
                    numbers.append(message["n"])
            assert numbers == list(range(sent))
            while conn.outbox.busy:  # noqa: ASYNC110 - all sent: the writer ends
                await anyio.sleep(0.01)
        assert node.connected()
        tg.cancel_scope.cancel()


async def test_a_peer_that_does_not_read_is_closed_past_the_outbox(tmp_path: Any) -> None:
    """Frames queued past OUTBOX (the peer has not read WRITE_HIGH and the kernel's buffers): the
    connection is closed, saying why; no sender ever waited on it."""
    listener = Downs()
    async with anyio.create_task_group() as tg:
        node, _, conn = await _kept_peer_that_does_not_read(tmp_path, tg, listener)
        await _until_queued(node, conn, OUTBOX)
        assert not await node.send(conn.peer_id, {"type": "x"})
        with anyio.fail_after(5):
            await listener.went.wait()
        assert listener.down[conn.peer_id] == f"not reading ({OUTBOX} frames queued)"
        tg.cancel_scope.cancel()
