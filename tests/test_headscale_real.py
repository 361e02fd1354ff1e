"""The Headscale plugin end to end, against a real Headscale v0.29 and real ``tailscaled``.

One Headscale on loopback and four clients (userspace networking) for the whole module, started
in parallel:

* ``hs-a`` - ``tag:exo``: plays "this node" (its Tailscale IPs are given as ``self_addresses``);
* ``hs-b`` - ``tag:exo``;
* ``hs-c`` - ``tag:exo`` and the port tag ``tag:exo-port-52415``;
* ``hs-u`` - untagged (a user's node).

The plugin runs in-process through the core's hooks (``exo_discovery_core.testing``) and once as a
real ``exo-discovery run --json`` process. The last two tests change the tailnet (``hs-u`` gets
tagged by self-registration, ``hs-b`` goes down), so they run last, in this order.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shutil
import threading
import time
from collections.abc import AsyncGenerator, Iterable, Iterator
from contextlib import ExitStack, aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest

from exo_discovery_core import NodeInfo, PeerCandidate
from exo_discovery_core.testing import make_context, node_info, peer_sets
from exo_discovery_headscale.plugin import HeadscalePlugin
from tests.support.gotools import TOOLS, binary_path
from tests.support.headscale import (
    HeadscaleServer,
    TailscaleClient,
    free_port,
    start_clients,
    wait_for,
)
from tests.support.nodes import NodeProcess

pytestmark = [pytest.mark.headscale, pytest.mark.anyio, pytest.mark.timeout(300)]

USER = "testuser"
PORT = 52417  # make_context's node port: where a node without a port tag is dialed
TAG_PORT = 52415  # hs-c's port tag (declared in the server's default policy)
TS_V4 = ipaddress.ip_network("100.64.0.0/10")
TS_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")
# Headscale 0.29 keeps a node online for a hard-coded 10 s after its map session drops.
OFFLINE_TIMEOUT_S = 40.0

Expected = frozenset[tuple[str, frozenset[str]]]


@dataclass
class Tailnet:
    hs: HeadscaleServer
    api_key: str
    api: httpx.Client  # the REST API, to check what the plugin did on the server
    a: TailscaleClient  # tag:exo, "this node"
    b: TailscaleClient  # tag:exo
    c: TailscaleClient  # tag:exo + tag:exo-port-52415
    u: TailscaleClient  # untagged

    def config(self, me: TailscaleClient | None = None, **extra: Any) -> dict[str, Any]:
        """Plugin config with ``me``'s (default: hs-a's) Tailscale IPs as this node's."""
        me = me or self.a
        return {
            "api_url": self.hs.url,
            "api_key": self.api_key,
            "poll_interval": 0.5,
            "timeout": 5.0,
            "self_addresses": [me.ipv4, me.ipv6],
            **extra,
        }

    def nodes(self) -> dict[str, dict[str, Any]]:
        """``GET /api/v1/node`` keyed by node name."""
        resp = self.api.get("/api/v1/node")
        resp.raise_for_status()
        return {n["name"]: n for n in resp.json()["nodes"]}

    def set_tags(self, client: TailscaleClient, tags: Iterable[str]) -> dict[str, Any]:
        """The admin sets ``client``'s tags through the REST API."""
        node_id = self.nodes()[client.hostname]["id"]
        resp = self.api.post(f"/api/v1/node/{node_id}/tags", json={"tags": sorted(tags)})
        assert resp.status_code == 200, resp.text
        node: dict[str, Any] = resp.json()["node"]
        return node


def _go_available() -> bool:
    return shutil.which("go") is not None or all(binary_path(n).is_file() for n in TOOLS)


@pytest.fixture(scope="module")
def tailnet() -> Iterator[Tailnet]:
    """Headscale with four clients started in parallel; every process ends with the module."""
    if not _go_available():
        pytest.skip("Go toolchain not available to build headscale/tailscale")
    started = time.monotonic()
    with ExitStack() as stack:
        hs = stack.enter_context(HeadscaleServer())
        hs.create_user(USER)
        exo_key = hs.create_preauth_key(USER, tags=["tag:exo"])
        port_key = hs.create_preauth_key(USER, tags=["tag:exo", f"tag:exo-port-{TAG_PORT}"])
        user_key = hs.create_preauth_key(USER)
        api_key = hs.create_api_key()
        api = stack.enter_context(
            httpx.Client(
                base_url=hs.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
            )
        )
        clients = start_clients(
            stack,
            hs.url,
            [
                (exo_key, "hs-a"),
                (exo_key, "hs-b"),
                (port_key, "hs-c"),
                (user_key, "hs-u"),
            ],
        )
        net = Tailnet(hs, api_key, api, *clients)

        def all_online() -> bool:
            nodes = net.nodes()
            return all(nodes.get(c.hostname, {}).get("online") for c in clients)

        wait_for(all_online, timeout=30, what="all four nodes online in /api/v1/node")
        print(f"\ntailnet up in {time.monotonic() - started:.2f} s")
        yield net


def _plugin() -> HeadscalePlugin:
    return HeadscalePlugin(register_retry=1.0)


def _node() -> NodeInfo:
    """A node without interfaces: which tailnet node it is, only self_addresses says."""
    return node_info(port=PORT, interfaces=())


def _expected(*members: tuple[TailscaleClient, int]) -> Expected:
    """(hostname, {IPv4:port, [IPv6]:port}) for each member."""
    out: set[tuple[str, frozenset[str]]] = set()
    for client, port in members:
        assert client.ipv4 and client.ipv6
        out.add((client.hostname, frozenset({f"{client.ipv4}:{port}", f"[{client.ipv6}]:{port}"})))
    return frozenset(out)


def _summary(peers: Iterable[PeerCandidate]) -> Expected:
    return frozenset(
        (dict(p.metadata)["hostname"], frozenset(str(a) for a in p.addresses)) for p in peers
    )


def _hosts(peers: Iterable[PeerCandidate]) -> set[str]:
    return {dict(p.metadata)["hostname"] for p in peers}


# -- discovery ----------------------------------------------------------------------------------


async def test_discovers_exactly_the_other_online_tagged_nodes(tailnet: Tailnet) -> None:
    """b and c (c at its port tag's port), with both Tailscale IPs; not u, not a itself."""
    [peers] = await peer_sets(
        _plugin(), tailnet.config(), name="headscale", node=_node(), timeout=20
    )
    assert _summary(peers) == _expected((tailnet.b, PORT), (tailnet.c, TAG_PORT))
    server = tailnet.nodes()
    for peer in peers:
        meta = dict(peer.metadata)
        assert meta["headscale_node_id"] == str(server[meta["hostname"]]["id"])
        assert peer.peer_id is None  # learned in the handshake
        v4, v6 = (ipaddress.ip_address(a.host) for a in peer.addresses)
        assert v4.version == 4 and v4 in TS_V4, peer
        assert v6.version == 6 and v6 in TS_V6, peer


async def test_each_node_sees_the_others(tailnet: Tailnet) -> None:
    """From c's seat: a and b; from u's seat (untagged, not a member): all three tagged."""
    [from_c] = await peer_sets(
        _plugin(), tailnet.config(tailnet.c), name="headscale", node=_node(), timeout=20
    )
    assert _summary(from_c) == _expected((tailnet.a, PORT), (tailnet.b, PORT))
    [from_u] = await peer_sets(
        _plugin(), tailnet.config(tailnet.u), name="headscale", node=_node(), timeout=20
    )
    assert _hosts(from_u) == {"hs-a", "hs-b", "hs-c"}


async def test_other_tag_and_user_filter(tailnet: Tailnet) -> None:
    """tag:other is declared but on no node: empty. On 0.28+ tagged nodes belong to no user."""
    [none] = await peer_sets(
        _plugin(), tailnet.config(tag="tag:other"), name="headscale", node=_node(), timeout=20
    )
    assert none == frozenset()
    [of_user] = await peer_sets(
        _plugin(),
        tailnet.config(user=USER, all_nodes_of_user=True),
        name="headscale",
        node=_node(),
        timeout=20,
    )
    assert _summary(of_user) == _expected((tailnet.u, PORT))


# -- doctor -------------------------------------------------------------------------------------


async def test_doctor_against_the_real_server(tailnet: Tailnet) -> None:
    plugin = _plugin()
    context = make_context(plugin, tailnet.config(), name="headscale", node=_node())
    checks = {c.name: c for c in await plugin.doctor(context)}
    assert all(c.ok for c in checks.values()), checks
    assert checks["headscale: API URL"].detail == tailnet.hs.url
    assert "/api/v1/node (Headscale 0.23 or later)" in checks["headscale: server reachable"].detail
    assert checks["headscale: API key"].detail == "accepted"
    assert checks["headscale: nodes"].detail == "4 visible, 3 members (tag:exo), 3 of them online"
    a_id = tailnet.nodes()["hs-a"]["id"]
    assert checks["headscale: this node"].detail == f"Headscale node {a_id} (hs-a), carries tag:exo"

    # u lacks the tag; with self_register the doctor says it will be added.
    u_context = make_context(
        plugin, tailnet.config(tailnet.u, self_register=True), name="headscale", node=_node()
    )
    me = {c.name: c for c in await plugin.doctor(u_context)}["headscale: this node"]
    assert me.ok and "lacks tag:exo; self_register will add it" in me.detail


async def test_doctor_with_a_wrong_key(tailnet: Tailnet) -> None:
    plugin = _plugin()
    wrong = "hskey-api-wrong-0123456789abcdef"
    context = make_context(plugin, tailnet.config(api_key=wrong), name="headscale", node=_node())
    checks = {c.name: c for c in await plugin.doctor(context)}
    assert checks["headscale: server reachable"].ok
    key = checks["headscale: API key"]
    assert not key.ok and "HTTP 401" in key.detail and "apikeys create" in key.fix
    assert wrong not in repr(checks)
    assert tailnet.api_key not in repr(checks)


# -- a real node process ------------------------------------------------------------------------


class _RecordingNode(NodeProcess):
    """A NodeProcess that also keeps every raw stdout line (JSON or not)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.raw: list[bytes] = []
        super().__init__(*args, **kwargs)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            event["_mono"] = time.monotonic()
            self._queue.put(event)
        self._queue.put(None)


def test_node_process_reports_the_tagged_nodes(tailnet: Tailnet, tmp_path: Path) -> None:
    """``exo-discovery -vv run --json --plugins headscale``, the key in the environment only."""
    assert tailnet.a.ipv4 and tailnet.a.ipv6
    port = free_port()
    args = [
        "--plugins", "headscale",
        "--no-connect",  # nothing listens on the Tailscale IPs (userspace networking), and
        "--no-verify",  # a dial to them would leave this machine: the node dials nothing
        "--listen-host", "127.0.0.1",
        "--port", str(port),
        "--headscale-api-url", tailnet.hs.url,
        "--headscale-poll-interval", "0.5",
        "--headscale-self-addresses", f"{tailnet.a.ipv4},{tailnet.a.ipv6}",
    ]  # fmt: skip
    env = {"HEADSCALE_API_KEY": tailnet.api_key}
    node = _RecordingNode(tmp_path / "node", args, env=env, name="node-a")
    try:
        assert tailnet.api_key not in " ".join(node.argv)
        want = {addrs for _, addrs in _expected((tailnet.b, port), (tailnet.c, TAG_PORT))}
        seen: set[frozenset[str]] = set()
        deadline = time.monotonic() + 20
        while not want <= seen:
            event = node.wait_for("peer_discovered", timeout=max(deadline - time.monotonic(), 0.1))
            assert event["sources"] == ["headscale"], event
            seen.add(frozenset(event["addresses"]))
        print(
            f"\nnode process: both tagged peers {time.monotonic() - node.started_at:.2f} s "
            "after start"
        )
        time.sleep(1.0)  # two more polls: nothing else may show up
        node.drain()
        found = [frozenset(e["addresses"]) for e in node.events if e["event"] == "peer_discovered"]
        assert set(found) == want, found
        assert not any(e["event"] in ("peer_lost", "plugin_error") for e in node.events)
    finally:
        node.stop()
    node.join_reader(timeout=5)
    stdout = b"".join(node.raw)
    stderr = node.log_path.read_bytes()
    assert b"Headscale: 2 peer(s) among 4 node(s)" in stderr  # the log is really there
    assert tailnet.api_key.encode() not in stdout + stderr


# -- these change the tailnet: run last, in this order --------------------------------------------


async def test_self_register_tags_this_node_on_the_server(
    tailnet: Tailnet, caplog: pytest.LogCaptureFixture
) -> None:
    """u (tagged tag:other by the admin) gets tag:exo added by the plugin, keeping tag:other;
    when the admin removes it again, the plugin puts it back."""
    u = tailnet.u
    tailnet.set_tags(u, ["tag:other"])
    config = tailnet.config(u, self_register=True)
    caplog.set_level(logging.INFO, logger="exo_discovery.plugin.headscale")

    start = time.monotonic()
    [peers] = await peer_sets(_plugin(), config, name="headscale", node=_node(), timeout=20)
    assert _hosts(peers) == {"hs-a", "hs-b", "hs-c"}  # never itself
    node = tailnet.nodes()[u.hostname]
    assert sorted(node["tags"]) == ["tag:exo", "tag:other"]
    print(f"\nself_register: tagged on the server {time.monotonic() - start:.2f} s after start")
    assert any("self_register: tagged this node" in r.getMessage() for r in caplog.records)

    # The client learns its tags from the netmap.
    wait_for(
        lambda: sorted(u.status()["Self"].get("Tags") or []) == ["tag:exo", "tag:other"],
        timeout=30,
        what="hs-u to see tag:exo and tag:other on itself",
    )
    # The others now see u as a member.
    [from_a] = await peer_sets(
        _plugin(), tailnet.config(), name="headscale", node=_node(), timeout=20
    )
    assert _hosts(from_a) == {"hs-b", "hs-c", "hs-u"}

    # Already tagged: a new run changes nothing.
    caplog.clear()
    await peer_sets(_plugin(), config, name="headscale", node=_node(), timeout=20)
    assert not any("self_register" in r.getMessage() for r in caplog.records)

    # The admin removes the tag while the plugin runs: it is added again within a poll or two.
    context = make_context(_plugin(), config, name="headscale", node=_node())
    stream = cast(AsyncGenerator[Iterable[PeerCandidate], None], _plugin().discover_peers(context))
    first = anyio.Event()

    async def drive() -> None:  # the generator polls only while it is being consumed
        async with aclosing(stream):
            async for _ in stream:
                first.set()

    def back() -> bool:
        return sorted(tailnet.nodes()[u.hostname]["tags"]) == ["tag:exo", "tag:other"]

    async with anyio.create_task_group() as group:
        group.start_soon(drive)
        with anyio.fail_after(20):
            await first.wait()
        asked = time.monotonic()
        await anyio.to_thread.run_sync(tailnet.set_tags, u, ["tag:other"])
        removed = time.monotonic()
        await anyio.to_thread.run_sync(
            lambda: wait_for(back, timeout=20, interval=0.05, what="tag:exo back on hs-u")
        )
        group.cancel_scope.cancel()
    print(
        f"self_register: the admin's untagging took {removed - asked:.2f} s; the plugin put "
        f"tag:exo back {time.monotonic() - removed:.2f} s after it"
    )


async def test_a_node_going_down_drops_out(tailnet: Tailnet) -> None:
    """b's tailscaled stops; Headscale marks it offline after its 10 s grace; the plugin drops it
    within a poll after that."""
    context = make_context(_plugin(), tailnet.config(), name="headscale", node=_node())
    stream = cast(AsyncGenerator[Iterable[PeerCandidate], None], _plugin().discover_peers(context))
    server_offline: list[float] = []
    stop = threading.Event()

    def watch_server() -> None:
        with httpx.Client(
            base_url=tailnet.hs.url,
            headers={"Authorization": f"Bearer {tailnet.api_key}"},
            timeout=5,
        ) as api:
            while not stop.is_set():
                nodes = {n["name"]: n for n in api.get("/api/v1/node").json()["nodes"]}
                if not nodes["hs-b"].get("online"):
                    server_offline.append(time.monotonic())
                    return
                time.sleep(0.05)

    async with aclosing(stream):
        with anyio.fail_after(20):
            before = frozenset(await anext(stream))
        assert "hs-b" in _hosts(before) and "hs-c" in _hosts(before)
        watcher = threading.Thread(target=watch_server, daemon=True)
        watcher.start()
        try:
            down_at = time.monotonic()
            await anyio.to_thread.run_sync(tailnet.b.down)
            stopped_at = time.monotonic()
            with anyio.fail_after(OFFLINE_TIMEOUT_S):
                after = frozenset(await anext(stream))
            dropped_at = time.monotonic()
        finally:
            stop.set()
            watcher.join(timeout=10)
    assert _summary(after) == frozenset(p for p in _summary(before) if p[0] != "hs-b")
    assert tailnet.nodes()["hs-b"]["online"] is False
    took = dropped_at - down_at
    line = f"\nhs-b down() -> dropped by the plugin in {took:.2f} s (down() itself "
    line += f"{stopped_at - down_at:.2f} s"
    if server_offline:
        line += f"; a 50 ms REST watcher saw it offline at {server_offline[0] - down_at:.2f} s, "
        line += f"plugin after that watcher: {dropped_at - server_offline[0]:+.2f} s"
    print(line + ")")
    assert took < OFFLINE_TIMEOUT_S
