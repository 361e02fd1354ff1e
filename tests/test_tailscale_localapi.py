"""The Tailscale plugin against a fake tailscaled LocalAPI on a unix socket (fast, no Go).

The fake answers ``/localapi/v0/status`` from a dict the test edits, and either streams IPN bus
notifications the test sends or answers the bus with 404 (an old or odd daemon).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from anyio.from_thread import start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import ValidationError

from exo_discovery_core import ConfigError, DiscoveryContext, PeerCandidate, testing
from exo_discovery_core.testing import make_context, peer_sets
from exo_discovery_tailscale import plugin as tailscale
from exo_discovery_tailscale.config import TailscaleConfig
from exo_discovery_tailscale.localapi import WATCH_MASK, LocalAPI, LocalAPIError

pytestmark = pytest.mark.anyio

SELF_IPS = ["100.64.0.1", "fd7a:115c:a1e0::1"]


def peer(
    name: str, n: int, *, tags: list[str] | None = None, online: bool = True, **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ID": f"n{n}",
        "HostName": name,
        "DNSName": f"{name}.exo.test.",
        "TailscaleIPs": [f"100.64.0.{n}", f"fd7a:115c:a1e0::{n}"],
        "Online": online,
        **extra,
    }
    if tags is not None:
        data["Tags"] = tags
    return data


def status(*peers: dict[str, Any], state: str = "Running") -> dict[str, Any]:
    return {
        "Version": "1.98.10-fake",
        "BackendState": state,
        "TailscaleIPs": SELF_IPS,
        "Self": {"ID": "n1", "HostName": "me", "TailscaleIPs": SELF_IPS, "Tags": ["tag:exo"]},
        "Peer": {f"nodekey:{p['ID']}": p for p in peers},
    }


STATUS = "/localapi/v0/status"
BUS = "/localapi/v0/watch-ipn-bus"


@dataclass
class FakeTailscaled:
    """A LocalAPI on a unix socket: status from ``self.status``, the bus from ``notify``."""

    socket: Path
    status: dict[str, Any] | str
    bus: bool = True
    requests: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)
    watchers: list[MemoryObjectSendStream[dict[str, Any]]] = field(default_factory=list)

    async def notify(self, note: dict[str, Any]) -> None:
        for send in list(self.watchers):
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await send.send(note)

    async def handle(self, stream: SocketStream) -> None:
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            await self._handle(stream)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive()
            lines = head.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
            target = lines[0].split(" ")[1]
            headers = dict(line.split(": ", 1) for line in lines[1:])
            self.requests.append(target)
            self.hosts.add(headers.get("Host", headers.get("host", "")))
            if target.startswith("/localapi/v0/status"):
                body = (
                    self.status if isinstance(self.status, str) else json.dumps(self.status)
                ).encode()
                await stream.send(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            elif target.startswith("/localapi/v0/watch-ipn-bus") and self.bus:
                send, receive = anyio.create_memory_object_stream[dict[str, Any]](100)
                self.watchers.append(send)
                try:
                    await stream.send(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Connection: close\r\n\r\n"
                    )
                    await stream.send(json.dumps({"State": 6, "SessionID": "x"}).encode() + b"\n")
                    await self._stream_notes(stream, receive)
                finally:
                    self.watchers.remove(send)
            else:
                body = b"404 page not found\n"
                await stream.send(
                    b"HTTP/1.1 404 Not Found\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )

    @staticmethod
    async def _stream_notes(
        stream: SocketStream, receive: MemoryObjectReceiveStream[dict[str, Any]]
    ) -> None:
        async with receive:
            async for note in receive:
                await stream.send(json.dumps(note).encode() + b"\n")


@asynccontextmanager
async def fake_tailscaled(
    state: dict[str, Any] | str, *, bus: bool = True
) -> AsyncIterator[FakeTailscaled]:
    directory = Path(tempfile.mkdtemp(prefix="ts-fake-", dir="/tmp"))
    fake = FakeTailscaled(directory / "tailscaled.sock", state, bus)
    listener = await anyio.create_unix_listener(fake.socket)
    # closed after the group, not awaited in its cancelled scope: a Cancelled raised there would
    # replace the test body's AssertionError and the group would swallow it (the test passed)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, fake.handle)
        try:
            yield fake
        finally:
            group.cancel_scope.cancel()


@asynccontextmanager
async def discovering(
    context: DiscoveryContext[Any],
) -> AsyncIterator[AsyncIterator[Iterable[PeerCandidate]]]:
    """The plugin's iterator as the node runs it, background tasks included (the core's helper)."""
    async with testing.discovering(tailscale, context=context) as stream:
        yield stream


def bus_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "exo-tailscale-ipn-bus"]


def hosts(peers: frozenset[PeerCandidate]) -> set[str]:
    return {dict(p.metadata)["hostname"] for p in peers}


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["tag:exo", "tag:Exo-2", "tag:a"])
def test_valid_tags(tag: str) -> None:
    assert TailscaleConfig(tag=tag).tag == tag


@pytest.mark.parametrize("tag", ["exo", "tag:", "tag:1exo", "tag:ex_o", "tag:ex.o", "tag:-x"])
def test_invalid_tags_are_refused(tag: str) -> None:
    with pytest.raises(ValidationError, match="not a Tailscale tag"):
        TailscaleConfig(tag=tag)


def test_env_sets_the_socket_and_a_bad_tag_names_its_origin() -> None:
    context = make_context(tailscale, env={"TAILSCALE_SOCKET": "/tmp/x.sock"})
    assert context.config.socket == Path("/tmp/x.sock")
    assert context.config.port is None and context.config.poll_interval == 10.0
    with pytest.raises(ConfigError, match="env TAILSCALE_TAG"):
        make_context(tailscale, env={"TAILSCALE_TAG": "exo"})
    flagged = make_context(
        tailscale,
        env={"TAILSCALE_SOCKET": "/tmp/x.sock"},
        flags={"--tailscale-socket": "/tmp/y.sock"},
    )
    assert flagged.config.socket == Path("/tmp/y.sock")  # flags over env


# -- selection -----------------------------------------------------------------------------------


async def test_keeps_online_tagged_peers_and_skips_self() -> None:
    state = status(
        peer("a", 2, tags=["tag:exo"]),
        peer("b", 3, tags=["tag:other", "tag:exo"]),
        peer("offline", 4, tags=["tag:exo"], online=False),
        peer("untagged", 5),
        peer("expired", 6, tags=["tag:exo"], Expired=True),
        peer("me-again", 1, tags=["tag:exo"]),  # this machine's own IPs: never a peer
        peer("noip", 7, tags=["tag:exo"], TailscaleIPs=[]),
    )
    async with fake_tailscaled(state) as fake:
        [peers] = await peer_sets(tailscale, {"socket": str(fake.socket), "watch": False})
        assert hosts(peers) == {"a", "b"}
        a = next(p for p in peers if dict(p.metadata)["hostname"] == "a")
        assert [str(x) for x in a.addresses] == ["100.64.0.2:52417", "[fd7a:115c:a1e0::2]:52417"]
        assert dict(a.metadata) == {"hostname": "a", "dns_name": "a.exo.test", "tailscale_id": "n2"}
        [everyone] = await peer_sets(
            tailscale, {"socket": str(fake.socket), "all_peers": True, "port": 7000}
        )
        assert hosts(everyone) == {"a", "b", "untagged"}
        assert {x.port for p in everyone for x in p.addresses} == {7000}
    assert fake.hosts == {"local-tailscaled.sock"}


async def test_stopped_daemon_means_no_peers(caplog: pytest.LogCaptureFixture) -> None:
    async with fake_tailscaled(status(peer("a", 2, tags=["tag:exo"]), state="Stopped")) as fake:
        [peers] = await peer_sets(tailscale, {"socket": str(fake.socket), "watch": False})
    assert peers == frozenset()
    assert "tailscaled is Stopped" in caplog.text and "tailscale up" in caplog.text


# -- errors --------------------------------------------------------------------------------------


async def test_missing_socket_message(tmp_path: Path) -> None:
    path = tmp_path / "nope.sock"
    async with LocalAPI(path) as api:
        with pytest.raises(
            LocalAPIError, match=f"no tailscaled on this machine \\(no socket at {path}\\)"
        ) as caught:
            await api.status()
    assert caught.value.idle, "no tailscaled at all is idle, not failing"


async def test_missing_socket_is_logged_once_and_nothing_yielded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "nope.sock"
    with pytest.raises(TimeoutError):
        await peer_sets(tailscale, {"socket": str(path), "poll_interval": 0.05}, timeout=1.0)
    said = [
        r for r in caplog.records if r.levelno >= logging.INFO and "no socket at" in r.getMessage()
    ]
    assert len(said) == 1, said  # not on every retry
    assert said[0].levelno == logging.INFO and f"no socket at {path}" in said[0].getMessage()


async def test_bad_json_message() -> None:
    async with fake_tailscaled("{not json") as fake, LocalAPI(fake.socket) as api:
        with pytest.raises(LocalAPIError, match="bad JSON from /localapi/v0/status"):
            await api.status()


async def test_unexpected_shape_message() -> None:
    shape = {"BackendState": "Running", "Peer": []}
    async with fake_tailscaled(shape) as fake, LocalAPI(fake.socket) as api:
        with pytest.raises(LocalAPIError, match="unexpected shape at Peer"):
            await api.status()


async def test_not_a_socket_message(tmp_path: Path) -> None:
    path = tmp_path / "file.sock"
    path.write_text("")
    async with LocalAPI(path) as api:
        with pytest.raises(LocalAPIError, match="tailscaled not running or socket not at"):
            await api.status()


@pytest.mark.skipif(os.geteuid() == 0, reason="root opens any socket")
async def test_permission_denied_message() -> None:
    async with fake_tailscaled(status()) as fake, LocalAPI(fake.socket) as api:
        fake.socket.chmod(0)
        with pytest.raises(LocalAPIError, match="permission denied"):
            await api.status()


# -- the IPN bus ---------------------------------------------------------------------------------


async def test_bus_wakes_the_poll_at_once() -> None:
    """Polling every 5 minutes; a PeerChanges note on the bus makes the change show in moments."""
    state = status(peer("a", 2, tags=["tag:exo"]), peer("b", 3, tags=["tag:exo"]))
    async with fake_tailscaled(state) as fake:
        context = make_context(tailscale, {"socket": str(fake.socket), "poll_interval": 300})
        send, sets = anyio.create_memory_object_stream[frozenset[PeerCandidate]](10)

        async def consume() -> None:
            async with send, discovering(context) as stream:
                async for item in stream:
                    await send.send(frozenset(item))

        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            with anyio.fail_after(5):
                assert hosts(await sets.receive()) == {"a", "b"}
            with anyio.fail_after(5):  # the bus is open; its first note caused one more read
                while not fake.watchers or fake.requests.count(STATUS) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert "/localapi/v0/watch-ipn-bus?mask=4098" in fake.requests
            reads = fake.requests.count(STATUS)
            assert reads == 2
            # An unrelated note (engine stats) does not cause a read (a window: on a busy
            # machine it may see less, never more)
            await fake.notify({"Engine": {"RBytes": 1}})
            await anyio.sleep(0.3)
            assert fake.requests.count(STATUS) == reads
            state["Peer"]["nodekey:n3"]["Online"] = False
            await fake.notify({"PeerChanges": [{"NodeID": 3, "Online": False}]})
            with anyio.fail_after(5):  # in moments: the poll would take 300 s
                assert hosts(await sets.receive()) == {"a"}
            assert fake.requests.count(STATUS) == reads + 1  # that note's read, no other
            group.cancel_scope.cancel()
    assert not bus_threads(), "the bus thread outlived the plugin"


async def test_without_bus_it_polls_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    state = status(peer("a", 2, tags=["tag:exo"]))
    async with fake_tailscaled(state, bus=False) as fake:
        config = {"socket": str(fake.socket), "poll_interval": 0.2}
        context = make_context(tailscale, config)
        async with discovering(context) as stream:
            with anyio.fail_after(5):
                assert hosts(frozenset(await anext(stream))) == {"a"}
                state["Peer"]["nodekey:n2"]["Online"] = False
                assert hosts(frozenset(await anext(stream))) == set()
                while sum(r.startswith(BUS) for r in fake.requests) < 3:  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # a few more failed attempts at the bus
    assert not bus_threads()
    warnings = [r.getMessage() for r in caplog.records if "IPN bus" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "HTTP 404" in warnings[0] and "polling every 0.2 s" in warnings[0]


# -- doctor --------------------------------------------------------------------------------------


async def test_doctor_missing_socket(tmp_path: Path) -> None:
    path = tmp_path / "nope.sock"
    [check] = await tailscale.doctor(make_context(tailscale, {"socket": str(path)}))
    assert check.ok, "no tailscaled on this machine: the plugin is idle, not failing"
    assert f"no socket at {path}), so the plugin stays idle" in check.detail
    assert "TAILSCALE_SOCKET" in check.detail


async def test_doctor_needs_login() -> None:
    async with fake_tailscaled(status(state="NeedsLogin")) as fake:
        checks = await tailscale.doctor(make_context(tailscale, {"socket": str(fake.socket)}))
    assert [c.ok for c in checks] == [True, False]
    assert "NeedsLogin" in checks[1].detail and "tailscale up" in checks[1].fix


async def test_doctor_no_tagged_peer_and_no_bus() -> None:
    async with fake_tailscaled(status(peer("u", 2)), bus=False) as fake:
        checks = {
            c.name: c
            for c in await tailscale.doctor(make_context(tailscale, {"socket": str(fake.socket)}))
        }
    peers = checks["tailscale: peers"]
    assert not peers.ok and "1 peers, 1 online, 0 online with tag:exo" in peers.detail
    assert "--advertise-tags=tag:exo" in peers.fix
    assert checks["tailscale: this node"].ok
    assert not checks["tailscale: IPN bus"].ok and checks["tailscale: IPN bus"].fix


async def test_watch_mask_bits() -> None:
    """NotifyInitialState (1<<1) | NotifyPeerChanges (1<<12), from tailscale ipn/backend.go."""
    assert WATCH_MASK == 2 | 4096 == 4098


def test_busy_bus_causes_no_event_loop_errors() -> None:
    """Sets change while notes pour in from another thread (as from a real daemon): nothing may
    go wrong in the event loop (cancelling asyncio reads of a unix socket did, with anyio)."""
    state = status(peer("a", 2, tags=["tag:exo"]))
    errors: list[object] = []
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(fake_tailscaled(state)) as fake,
    ):
        stop = threading.Event()

        def pour() -> None:
            while not stop.is_set():
                portal.call(fake.notify, {"PeerChanges": [{"NodeID": 2}]})

        async def consume() -> int:
            asyncio.get_running_loop().set_exception_handler(lambda _, c: errors.append(c))
            context = make_context(tailscale, {"socket": str(fake.socket), "poll_interval": 300})
            count = 0
            async with discovering(context) as stream:
                with anyio.move_on_after(2):
                    async for _ in stream:
                        count += 1
                        node = state["Peer"]["nodekey:n2"]
                        node["Online"] = not node["Online"]
            return count

        pourer = threading.Thread(target=pour)
        pourer.start()
        try:
            count = anyio.run(consume)
        finally:
            stop.set()
            pourer.join()
    assert count > 50, count  # each change was seen through the bus, over and over
    assert errors == []
    assert not bus_threads()
