"""The Headscale plugin against the oldest Headscale it supports, the real 0.22.3 (the ``machine``
API, forced tags), with real ``tailscaled`` v1.98 clients joined, beside the newest release in
test_headscale_real.py.

Headscale 0.22.3 cannot be ``go install``-ed through the module proxy (its deprecation lookup
refuses), so tests.support.gotools builds it in a throwaway module (cached, locked). Three
clients for the module: ``old-a`` (``tag:exo``, "this node"), ``old-b`` (``tag:exo``) and
``old-u`` (untagged). The wrong-key case is the real server's: HTTP 500 "Unauthorized".
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from exo_discovery_core import NodeInfo
from exo_discovery_core.testing import collecting, make_context, node_info, peer_sets
from exo_discovery_headscale.plugin import HeadscalePlugin
from tests.support.gotools import binary_path
from tests.support.headscale import HeadscaleServer, TailscaleClient, start_clients, wait_for

pytestmark = [pytest.mark.headscale, pytest.mark.anyio, pytest.mark.timeout(300)]

USER = "testuser"
PORT = 52417
WRONG_KEY = "hskey-wrong-0123456789abcdef"


@dataclass
class OldTailnet:
    hs: HeadscaleServer
    api_key: str
    api: httpx.Client
    a: TailscaleClient
    b: TailscaleClient
    u: TailscaleClient

    def config(self, me: TailscaleClient | None = None, **extra: Any) -> dict[str, Any]:
        me = me or self.a
        return {
            "api_url": self.hs.url,
            "api_key": self.api_key,
            "poll_interval": 0.5,
            "timeout": 5.0,
            "self_addresses": [me.ipv4, me.ipv6],
            **extra,
        }

    def machines(self) -> dict[str, dict[str, Any]]:
        resp = self.api.get("/api/v1/machine")
        resp.raise_for_status()
        return {m["name"]: m for m in resp.json()["machines"]}


@pytest.fixture(scope="module")
def old_tailnet() -> Iterator[OldTailnet]:
    if shutil.which("go") is None and not binary_path("headscale-0.22").is_file():
        pytest.skip("Go toolchain not available to build Headscale 0.22.3")
    with ExitStack() as stack:
        hs = stack.enter_context(HeadscaleServer(tool="headscale-0.22"))
        hs.create_user(USER)
        exo_key = hs.create_preauth_key(USER, tags=["tag:exo"])
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
                (exo_key, "old-a"),
                (exo_key, "old-b"),
                (user_key, "old-u"),
            ],
        )
        net = OldTailnet(hs, api_key, api, *clients)

        def all_online() -> bool:
            machines = net.machines()
            return all(machines.get(c.hostname, {}).get("online") for c in clients)

        wait_for(all_online, timeout=30, what="all three machines online in /api/v1/machine")
        yield net


def _plugin() -> HeadscalePlugin:
    return HeadscalePlugin(register_retry=1.0)


def _node() -> NodeInfo:
    """A node without interfaces: which tailnet node it is, only self_addresses says."""
    return node_info(port=PORT, interfaces=())


async def test_discovers_the_other_online_tagged_machine(old_tailnet: OldTailnet) -> None:
    [peers] = await peer_sets(
        _plugin(), old_tailnet.config(), name="headscale", node=_node(), timeout=20
    )
    b = old_tailnet.b
    assert {(dict(p.metadata)["hostname"], frozenset(map(str, p.addresses))) for p in peers} == {
        ("old-b", frozenset({f"{b.ipv4}:{PORT}", f"[{b.ipv6}]:{PORT}"}))
    }


async def test_doctor_names_the_machine_api(old_tailnet: OldTailnet) -> None:
    plugin = _plugin()
    context = make_context(plugin, old_tailnet.config(), name="headscale", node=_node())
    checks = {c.name: c for c in await plugin.doctor(context)}
    assert all(c.ok for c in checks.values()), checks
    assert (
        "machine API /api/v1/machine (Headscale 0.22)"
        in checks["headscale: server reachable"].detail
    )
    assert checks["headscale: API key"].detail == "accepted"
    assert checks["headscale: nodes"].detail == "3 visible, 2 members (tag:exo), 2 of them online"


async def test_a_wrong_key_is_diagnosed_as_a_rejected_key(
    old_tailnet: OldTailnet, caplog: pytest.LogCaptureFixture
) -> None:
    """The real 0.22 answers HTTP 500 "Unauthorized": doctor and the log say the key was
    rejected and how to make one, not "look at the server's log"."""
    async with httpx.AsyncClient(timeout=10) as http:
        raw = await http.get(
            f"{old_tailnet.hs.url}/api/v1/machine", headers={"Authorization": f"Bearer {WRONG_KEY}"}
        )
    assert (raw.status_code, raw.text) == (500, "Unauthorized")  # what makes this case special
    plugin = _plugin()
    config = old_tailnet.config(api_key=WRONG_KEY)
    checks = {
        c.name: c
        for c in await plugin.doctor(make_context(plugin, config, name="headscale", node=_node()))
    }
    assert checks["headscale: server reachable"].ok
    key = checks["headscale: API key"]
    assert not key.ok
    assert key.detail.startswith(
        "API key rejected (wrong, expired or lacking permission): HTTP 500"
    )
    assert "headscale apikeys create" in key.fix
    assert "server's log" not in key.fix
    caplog.set_level(logging.WARNING)
    async with collecting(plugin, config, name="headscale", node=_node()) as sets:
        with pytest.raises(TimeoutError):
            await sets.wait_for(1, timeout=2.0)  # nothing is yielded with a rejected key
    failed = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert len(failed) == 1 and "API key rejected" in failed[0], failed
    assert WRONG_KEY not in caplog.text and WRONG_KEY not in repr(checks)


async def test_self_register_sets_the_forced_tag_on_0_22(old_tailnet: OldTailnet) -> None:
    """old-u tags itself: on 0.22 the plugin replaces the machine's forced tags."""
    config = old_tailnet.config(old_tailnet.u, self_register=True)
    async with collecting(_plugin(), config, name="headscale", node=_node()) as sets:
        await sets.wait_for(1, timeout=20)
        await anyio.to_thread.run_sync(
            lambda: wait_for(
                lambda: "tag:exo" in old_tailnet.machines()["old-u"]["forcedTags"],
                timeout=20,
                what="old-u carrying tag:exo",
            )
        )
    [from_a] = await peer_sets(
        _plugin(), old_tailnet.config(), name="headscale", node=_node(), timeout=20
    )
    assert {dict(p.metadata)["hostname"] for p in from_a} == {"old-b", "old-u"}
