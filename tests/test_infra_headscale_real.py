"""Smoke tests for the real Headscale + Tailscale test infrastructure.

Builds (or reuses cached) headscale/tailscaled/tailscale binaries, runs a real
Headscale on loopback with two userspace-networking Tailscale clients, and checks
the REST API (``/api/v1/node``) that discovery code will consume.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.support.gotools import TOOLS, binary_path
from tests.support.headscale import HeadscaleServer, TailscaleClient, wait_for

pytestmark = [pytest.mark.headscale, pytest.mark.timeout(1200)]

TS_V4 = ipaddress.ip_network("100.64.0.0/10")
TS_V6 = ipaddress.ip_network("fd7a:115c:a1e0::/48")
USER = "testuser"
# Headscale keeps a node online for a hard-coded 10s after its map session drops
# (poll.go reconnect grace), so offline detection takes ~10.5s; allow slack.
OFFLINE_TIMEOUT_S = 40.0


@dataclass
class Env:
    """A running server, an API client and two joined Tailscale clients."""

    hs: HeadscaleServer
    api: httpx.Client
    plain: TailscaleClient
    tagged: TailscaleClient

    def nodes(self) -> dict[str, dict[str, Any]]:
        """``GET /api/v1/node`` keyed by node name."""
        resp = self.api.get("/api/v1/node")
        resp.raise_for_status()
        return {n["name"]: n for n in resp.json()["nodes"]}


def _go_available() -> bool:
    return shutil.which("go") is not None or all(binary_path(n).is_file() for n in TOOLS)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    """Module-scoped real Headscale with one user and two clients (one tagged)."""
    if not _go_available():
        pytest.skip("Go toolchain not available to build headscale/tailscale")
    with HeadscaleServer() as hs:
        hs.create_user(USER)
        plain_key = hs.create_preauth_key(USER, reusable=True)
        tagged_key = hs.create_preauth_key(USER, reusable=True, tags=["tag:exo"])
        api_key = hs.create_api_key()
        with (
            httpx.Client(
                base_url=hs.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
            ) as api,
            TailscaleClient(hs.url, plain_key, hostname="node-plain") as plain,
            TailscaleClient(hs.url, tagged_key, hostname="node-tagged") as tagged,
        ):
            yield Env(hs, api, plain, tagged)


def _assert_ts_addresses(node: dict[str, Any]) -> None:
    addrs = [ipaddress.ip_address(a) for a in node["ipAddresses"]]
    assert any(a.version == 4 and a in TS_V4 for a in addrs), addrs
    assert any(a.version == 6 and a in TS_V6 for a in addrs), addrs


def test_nodes_online_with_addresses_and_tags(env: Env) -> None:
    """Both nodes are online with Tailscale addresses; the tag is on the right node."""

    def both_online() -> dict[str, dict[str, Any]] | None:
        n = env.nodes()
        ok = all(n.get(h, {}).get("online") for h in ("node-plain", "node-tagged"))
        return n if ok else None

    nodes = wait_for(both_online, timeout=30, what="both nodes online in /api/v1/node")
    plain, tagged = nodes["node-plain"], nodes["node-tagged"]
    for node, client in ((plain, env.plain), (tagged, env.tagged)):
        assert node["online"] is True
        _assert_ts_addresses(node)
        assert client.ipv4 in node["ipAddresses"]
        assert client.ipv6 in node["ipAddresses"]
    assert plain["tags"] == []
    assert plain["user"]["name"] == USER
    assert tagged["tags"] == ["tag:exo"]
    # Since Headscale 0.28 tagged nodes are owned by the tags, not the user.
    assert tagged["user"]["name"] == "tagged-devices"
    # The CLI view agrees (protojson snake_case field names there).
    cli = {n["name"]: n for n in env.hs.list_nodes_cli()}
    assert set(cli) >= {"node-plain", "node-tagged"}
    assert cli["node-tagged"]["online"] is True


def test_set_tags_via_api(env: Env) -> None:
    """``POST /api/v1/node/{id}/tags`` with ``{"tags": [...]}`` replaces the node's tags."""
    node_id = env.nodes()["node-plain"]["id"]
    new_tags = ["tag:exo", "tag:exo-port-52415"]
    resp = env.api.post(f"/api/v1/node/{node_id}/tags", json={"tags": new_tags})
    assert resp.status_code == 200, resp.text
    assert sorted(resp.json()["node"]["tags"]) == sorted(new_tags)
    assert sorted(env.nodes()["node-plain"]["tags"]) == sorted(new_tags)
    # A tag without tagOwners in the policy is rejected.
    bad = env.api.post(f"/api/v1/node/{node_id}/tags", json={"tags": ["tag:unknown"]})
    assert bad.status_code >= 400, bad.text
    assert sorted(env.nodes()["node-plain"]["tags"]) == sorted(new_tags)
    # The client learns about its new tags from the netmap.
    wait_for(
        lambda: sorted(env.plain.status()["Self"].get("Tags") or []) == sorted(new_tags),
        timeout=30,
        what="client to see its new tags",
    )


def test_downed_client_goes_offline(env: Env) -> None:
    """Stopping tailscaled makes Headscale report ``online: false`` within a bound."""
    assert env.nodes()["node-tagged"]["online"] is True
    start = time.monotonic()
    env.tagged.down()
    wait_for(
        lambda: env.nodes()["node-tagged"]["online"] is False,
        timeout=OFFLINE_TIMEOUT_S,
        interval=0.1,
        what="node-tagged offline",
    )
    elapsed = time.monotonic() - start
    print(f"node-tagged reported offline {elapsed:.2f}s after down()")
    assert env.nodes()["node-plain"]["online"] is True
