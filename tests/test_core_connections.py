"""ConnectionManager's dials, against real loopback listeners: what counts as a refusal."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream

from exo_discovery_core.config import NodeConfig
from exo_discovery_core.connections import ConnectionManager, DialError
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address

pytestmark = pytest.mark.anyio


class Quiet:
    """A ConnectionListener that hears nothing worth keeping."""

    def identified(self, address: Address, peer_id: PeerId) -> None: ...
    def connection_up(self, peer_id: PeerId, address: Address) -> None: ...
    def connection_down(self, peer_id: PeerId, reason: str) -> None: ...
    def received(self, peer_id: PeerId, address: Address, message: dict[str, Any]) -> None: ...


async def dial_error(serve: Any, tmp_path: Any) -> DialError:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    config = NodeConfig(namespace="exo", state_dir=tmp_path)
    manager = ConnectionManager(Identity.generate(), config, 1, Quiet())
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
