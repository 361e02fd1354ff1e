"""The node's local status endpoint: a unix socket in the state directory.

``exo-discovery peers`` connects to it and reads one JSON document (the node, its plugins and
its peer table); the socket is only reachable by users who can enter the state directory (0700).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketStream, TaskGroup

if TYPE_CHECKING:
    from .node import Node
    from .plugins import PluginInfo

SOCKET_NAME = "status.sock"
log = logging.getLogger("exo_discovery.status")


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def snapshot(node: Node) -> dict[str, Any]:
    return {
        "peer_id": str(node.peer_id),
        "namespace": node.config.namespace,
        "port": node.port,
        "plugins": [_plugin_status(node, info) for info in node.plugin_infos()],
        "peers": node.peers(),
    }


def _plugin_status(node: Node, info: PluginInfo) -> dict[str, Any]:
    health = node.health.get(info.name)  # none for a plugin that is not running
    return {
        **info.as_dict(),
        "healthy": health.ok if health else None,
        "health": health.message if health else None,
    }


async def serve(node: Node, stack: AsyncExitStack, tg: TaskGroup) -> None:
    path = socket_path(node.config.state_dir)
    if len(os.fsencode(path)) >= 104:
        log.warning(
            "state dir path too long for a unix socket; `exo-discovery peers` will not work"
        )
        return
    path.unlink(missing_ok=True)
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)
    stack.callback(path.unlink, missing_ok=True)

    async def answer(stream: SocketStream) -> None:
        async with stream:
            await stream.send(json.dumps(snapshot(node), default=str).encode())

    async def serve_until_stopped() -> None:
        async with listener:
            await listener.serve(answer)

    tg.start_soon(serve_until_stopped)


async def query(state_dir: Path, timeout: float = 3.0) -> dict[str, Any]:
    """Read a running node's status; ConnectionError if none is running with this state dir."""
    path = socket_path(state_dir)
    try:
        with anyio.fail_after(timeout):
            async with await anyio.connect_unix(path) as stream:
                chunks = [chunk async for chunk in _receive_all(stream)]
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ConnectionError(f"no node is running with state dir {state_dir} ({path})") from exc
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


async def _receive_all(stream: SocketStream) -> Any:
    while True:
        try:
            yield await stream.receive()
        except anyio.EndOfStream:
            return
