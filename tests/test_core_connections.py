"""ConnectionManager's dials, against real loopback listeners: what counts as a refusal."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from exo_discovery_core.config import NodeConfig
from exo_discovery_core.connections import ConnectionManager, DialError
from exo_discovery_core.handshake import PROTOCOL
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.records import LocalRecord

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
