"""The Tailscale plugin against real tailscaled daemons joined to a real Headscale.

One Headscale and three clients for the whole module: ``ts-a`` tagged by its pre-auth key,
``ts-b`` joined untagged and then tagged by the admin (``headscale nodes tag``; Headscale 0.29
refuses ``--advertise-tags`` at registration with a user's key), ``ts-c`` untagged. The plugin reads ``ts-a``'s socket.
The last two tests change the tailnet (tag ts-c, stop ts-b), so they run last, in this order.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from exo_discovery_core import Address, PeerCandidate
from exo_discovery_core.testing import make_context, peer_sets, run_node
from exo_discovery_tailscale import plugin as tailscale
from tests.support.gotools import TOOLS, binary_path
from tests.support.headscale import HeadscaleServer, TailscaleClient, start_clients, wait_for
from tests.test_tailscale_localapi import discovering

pytestmark = [pytest.mark.headscale, pytest.mark.anyio, pytest.mark.timeout(600)]

USER = "testuser"
PORT = 52417  # make_context's node port: the default for `port`


@dataclass
class Tailnet:
    hs: HeadscaleServer
    a: TailscaleClient  # tagged by its pre-auth key; the plugin reads its socket
    b: TailscaleClient  # tagged by the admin after joining
    c: TailscaleClient  # untagged

    def config(self, **extra: Any) -> dict[str, Any]:
        return {"socket": str(self.a.socket_path), **extra}


def _go_available() -> bool:
    return shutil.which("go") is not None or all(binary_path(n).is_file() for n in TOOLS)


@pytest.fixture(scope="module")
def tailnet() -> Iterator[Tailnet]:
    """Headscale with three clients, started in parallel; all processes end with the module."""
    if not _go_available():
        pytest.skip("Go toolchain not available to build headscale/tailscale")
    with ExitStack() as stack:
        hs = stack.enter_context(HeadscaleServer())
        hs.create_user(USER)
        tagged_key = hs.create_preauth_key(USER, tags=["tag:exo"])
        user_key = hs.create_preauth_key(USER)
        clients = start_clients(
            stack,
            hs.url,
            [
                (tagged_key, "ts-a"),
                (user_key, "ts-b"),
                (user_key, "ts-c"),
            ],
        )
        net = Tailnet(hs, *clients)
        [b_id] = [n["id"] for n in hs.list_nodes_cli() if n["name"] == "ts-b"]
        hs.cli("nodes", "tag", "-i", str(b_id), "-t", "tag:exo")

        def a_sees_b_tagged_and_c() -> bool:
            peers = {p["HostName"]: p for p in (net.a.status().get("Peer") or {}).values()}
            online = {name for name, p in peers.items() if p.get("Online")}
            tagged = "tag:exo" in (peers.get("ts-b", {}).get("Tags") or [])
            return {"ts-b", "ts-c"} <= online and tagged

        wait_for(a_sees_b_tagged_and_c, timeout=60, what="ts-a to see ts-b (tagged), ts-c online")
        yield net


def _expected(client: TailscaleClient, port: int = PORT) -> PeerCandidate:
    assert client.ipv4 and client.ipv6
    return PeerCandidate(
        addresses=(Address(host=client.ipv4, port=port), Address(host=client.ipv6, port=port)),
        metadata=(("hostname", client.hostname),),
    )


def _addresses(peers: frozenset[PeerCandidate]) -> set[frozenset[str]]:
    return {frozenset(str(a) for a in p.addresses) for p in peers}


async def test_reports_exactly_the_other_tagged_peer(tailnet: Tailnet) -> None:
    [peers] = await peer_sets(tailscale, tailnet.config(), name="tailscale", timeout=20)
    assert _addresses(peers) == _addresses(frozenset({_expected(tailnet.b)}))
    [peer] = peers
    assert peer.addresses[0].host.startswith("100.64.")
    assert peer.addresses[1].host.startswith("fd7a:115c:a1e0:")
    meta = dict(peer.metadata)
    assert meta["hostname"] == "ts-b"
    assert meta["dns_name"].startswith("ts-b.")
    assert meta["tailscale_id"]
    assert peer.peer_id is None


async def test_all_peers_reports_both_others(tailnet: Tailnet) -> None:
    [peers] = await peer_sets(
        tailscale, tailnet.config(all_peers=True, port=6000), name="tailscale", timeout=20
    )
    expected = frozenset({_expected(tailnet.b, 6000), _expected(tailnet.c, 6000)})
    assert _addresses(peers) == _addresses(expected)
    assert {dict(p.metadata)["hostname"] for p in peers} == {"ts-b", "ts-c"}


async def test_other_tag_finds_nobody(tailnet: Tailnet) -> None:
    """tag:other is in the policy but on no node: an empty set, not an error."""
    [peers] = await peer_sets(tailscale, tailnet.config(tag="tag:other"), name="tailscale")
    assert peers == frozenset()


async def test_doctor_against_real_daemon(tailnet: Tailnet) -> None:
    checks = {c.name: c for c in await tailscale.doctor(make_context(tailscale, tailnet.config()))}
    assert all(c.ok for c in checks.values()), checks
    assert "Running" in checks["tailscale: daemon"].detail
    assert "2 peers, 2 online, 1 online with tag:exo" in checks["tailscale: peers"].detail
    assert "carries tag:exo" in checks["tailscale: this node"].detail
    assert checks["tailscale: IPN bus"].ok


async def test_doctor_untagged_node_gets_a_fix(tailnet: Tailnet) -> None:
    context = make_context(tailscale, {"socket": str(tailnet.c.socket_path)})
    checks = {c.name: c for c in await tailscale.doctor(context)}
    me = checks["tailscale: this node"]
    assert not me.ok and "--advertise-tags=tag:exo" in me.fix


async def test_in_a_real_node(tailnet: Tailnet) -> None:
    """The node runs the plugin through its hooks and lists the peer with its sources."""
    config = {"tailscale": tailnet.config(port=PORT)}
    async with run_node({"tailscale": tailscale}, plugin_config=config) as node:
        with anyio.fail_after(20):
            while True:
                rows = [r for r in node.status().peers if "tailscale" in r.sources]
                if rows:
                    break
                await anyio.sleep(0.1)
    [row] = rows
    assert set(row.addresses) == {f"{tailnet.b.ipv4}:{PORT}", f"[{tailnet.b.ipv6}]:{PORT}"}


async def test_tagging_a_node_shows_at_once(tailnet: Tailnet) -> None:
    """The admin tags ts-c; with polling every 5 minutes, only the IPN bus can tell us."""
    context = make_context(tailscale, tailnet.config(poll_interval=300), name="tailscale")
    async with discovering(context) as stream:
        with anyio.fail_after(20):
            assert {_host(p) for p in await anext(stream)} == {"ts-b"}
        [c_id] = [n["id"] for n in tailnet.hs.list_nodes_cli() if n["name"] == "ts-c"]
        start = time.monotonic()
        await anyio.to_thread.run_sync(
            tailnet.hs.cli, "nodes", "tag", "-i", str(c_id), "-t", "tag:exo"
        )
        with anyio.fail_after(10):
            assert {_host(p) for p in await anext(stream)} == {"ts-b", "ts-c"}
    print(
        f"\nts-c tagged by the admin -> plugin reported it {time.monotonic() - start:.2f} s later"
    )


def _host(peer: PeerCandidate) -> str:
    return dict(peer.metadata)["hostname"]


async def test_drops_a_peer_soon_after_the_server_marks_it_offline(tailnet: Tailnet) -> None:
    """Polling is set to 5 minutes here: only the IPN bus can make the plugin notice in time."""
    context = make_context(tailscale, tailnet.config(poll_interval=300), name="tailscale")
    marked_offline: list[float] = []  # when Headscale's node list says offline
    client_saw: list[float] = []  # when ts-a's own `tailscale status` says so
    stop = threading.Event()

    def watch_server() -> None:
        while not stop.is_set():
            nodes = {n["name"]: n for n in tailnet.hs.list_nodes_cli()}
            if not nodes["ts-b"].get("online"):
                marked_offline.append(time.monotonic())
                return
            time.sleep(0.02)

    def watch_client() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peers = (tailnet.a.status().get("Peer") or {}).values()
            if not any(p["HostName"] == "ts-b" and p.get("Online") for p in peers):
                client_saw.append(time.monotonic())
                return
            time.sleep(0.02)

    async with discovering(context) as stream, anyio.create_task_group() as group:
        with anyio.fail_after(20):
            first = frozenset(await anext(stream))
        assert {_host(p) for p in first} == {"ts-b", "ts-c"}  # ts-c was tagged just before
        group.start_soon(anyio.to_thread.run_sync, watch_server)
        group.start_soon(anyio.to_thread.run_sync, watch_client)
        downed = time.monotonic()
        await anyio.to_thread.run_sync(tailnet.b.down)
        try:
            with anyio.fail_after(45):
                async for peers in stream:
                    if {_host(p) for p in peers} == {"ts-c"}:  # ts-b gone, ts-c kept
                        break
        finally:
            stop.set()
        dropped = time.monotonic()
    assert marked_offline, "Headscale never marked ts-b offline"
    lag = dropped - marked_offline[0]
    seen = f"{client_saw[0] - downed:.2f} s" if client_saw else "never"
    print(
        f"\nts-b down -> Headscale offline {marked_offline[0] - downed:.2f} s; "
        f"ts-a's status offline {seen}; plugin dropped it {dropped - downed:.2f} s; "
        f"plugin lag after the server: {lag:.2f} s"
    )
    assert lag < 5.0, f"plugin noticed {lag:.2f} s after the server (poll interval was 300 s)"
