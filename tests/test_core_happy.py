"""Happy Eyeballs (RFC 8305): staggered parallel attempts over real loopback sockets, first
success wins, the others are cancelled or closed; and the address interleaving of section 4."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
from anyio.abc import SocketStream

from exo_discovery_core.happy import AllFailed, interleave, race
from exo_discovery_core.models import Address

pytestmark = pytest.mark.anyio


class Server:
    """A loopback listener that greets (b"hi") or stays silent; records what it saw."""

    def __init__(self, host: str, greet: bool) -> None:
        self.host, self.greet = host, greet
        self.port = 0
        self.closed_by_peer = anyio.Event()

    async def serve(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            if self.greet:
                await stream.send(b"hi")
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            self.closed_by_peer.set()


def greeting(host: str, port: int, started: list[str]) -> Callable[[], Awaitable[SocketStream]]:
    async def attempt() -> SocketStream:
        started.append(host)
        stream = await anyio.connect_tcp(host, port)
        try:
            with anyio.fail_after(10):
                if await stream.receive(2) != b"hi":
                    raise OSError("no greeting")
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return stream

    return attempt


async def test_a_silent_address_does_not_hold_up_the_next_and_is_closed_after_the_win() -> None:
    silent, fast, spare = (
        Server("127.0.0.2", False),
        Server("127.0.0.1", True),
        Server("127.0.0.3", True),
    )
    started: list[str] = []
    async with anyio.create_task_group() as group:
        for server in (silent, fast, spare):
            await group.start(server.serve)
        attempts = [greeting(s.host, s.port, started) for s in (silent, fast, spare)]
        discarded: list[SocketStream] = []

        async def discard(stream: SocketStream) -> None:
            discarded.append(stream)
            await stream.aclose()

        with anyio.fail_after(10):
            index, stream = await race(attempts, delay=0.25, discard=discard)
        assert index == 1
        assert started[:2] == ["127.0.0.2", "127.0.0.1"]
        assert "127.0.0.3" not in started or discarded  # started only if 1 was slow: then closed
        with anyio.fail_after(10):
            await silent.closed_by_peer.wait()  # the losing attempt's socket was closed
        await stream.aclose()
        group.cancel_scope.cancel()


async def test_a_failure_starts_the_next_attempt_at_once() -> None:
    """With a one-minute delay the second attempt can only start because the first failed."""
    refused_port = await _closed_port()
    fast = Server("127.0.0.1", True)
    started: list[str] = []
    async with anyio.create_task_group() as group:
        await group.start(fast.serve)
        attempts = [
            greeting("127.0.0.1", refused_port, started),
            greeting("127.0.0.1", fast.port, started),
        ]
        with anyio.fail_after(10):
            index, stream = await race(attempts, delay=60.0, discard=_close)
        assert index == 1
        await stream.aclose()
        group.cancel_scope.cancel()


async def test_a_late_success_is_discarded_so_one_is_kept() -> None:
    release = anyio.Event()
    discarded: list[str] = []

    async def stubborn() -> str:  # finishes even when cancelled, as a completed handshake would
        with anyio.CancelScope(shield=True):
            await release.wait()
        return "late"

    async def quick() -> str:
        release.set()
        return "first"

    async def discard(value: str) -> None:
        discarded.append(value)

    with anyio.fail_after(10):
        assert await race([stubborn, quick], delay=0.0, discard=discard) == (1, "first")
    assert discarded == ["late"]


async def test_all_failing_says_why_each_failed() -> None:
    async def boom(text: str) -> str:
        raise OSError(text)

    with pytest.raises(AllFailed) as info:
        await race(
            [lambda: boom("a refused"), lambda: boom("b unreachable")], delay=0.0, discard=_close
        )
    assert [str(e) for e in info.value.errors] == ["a refused", "b unreachable"]


async def _close(value: object) -> None:
    if isinstance(value, SocketStream):
        await value.aclose()


async def _closed_port() -> int:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
    await listener.aclose()
    return port


def _a(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return Address(host=host, port=int(port))


def test_interleave_alternates_families_within_a_rank_only() -> None:
    addresses = [
        _a(t)
        for t in (
            "10.0.0.1:1",
            "10.0.0.2:1",
            "[fd00::1]:1",
            "[fd00::2]:1",
            "192.168.1.2:1",
            "[fe80::1%en0]:1",
            "box.lan:1",
        )
    ]
    rank = {"10.0.0.1": 0, "10.0.0.2": 0, "fd00::1": 0, "fd00::2": 0}
    shown = [str(a) for a in interleave(addresses, lambda a: rank.get(a.host, 1))]
    assert shown == [
        "10.0.0.1:1",
        "[fd00::1]:1",
        "10.0.0.2:1",
        "[fd00::2]:1",
        "192.168.1.2:1",
        "[fe80::1%en0]:1",
        "box.lan:1",
    ]
    assert interleave([]) == []
