"""The Headscale plugin through the core's hooks, against the fake server: selection, faults,
self-registration, doctor, and that the API key never shows anywhere."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from exo_discovery_core import NodeInfo, PeerCandidate, PeerId
from exo_discovery_core.config import ConfigError, ConfigSource
from exo_discovery_core.identity import Identity
from exo_discovery_core.testing import collecting, make_context, node_info, peer_sets
from exo_discovery_headscale.api import HeadscaleClient, HeadscaleError
from exo_discovery_headscale.config import HeadscaleConfig
from exo_discovery_headscale.plugin import HeadscalePlugin
from tests.support.fake_headscale import FAULTS, VERSIONS, FakeHeadscale, FakeNode

KEY = "hskey-SECRET-1234567890"
ME = ipaddress.ip_address("100.64.0.1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _node_info(port: int = 52417) -> NodeInfo:
    """This node: its one interface address is ME, the Tailscale IP of node 1 of the fleet."""
    return node_info(port=port, interfaces=[str(ME)])


def _plugin() -> HeadscalePlugin:
    return HeadscalePlugin(auth_retry_after=0.2, register_retry=0.2)


def _config(fake: FakeHeadscale, **extra: Any) -> dict[str, Any]:
    return {
        "api_url": fake.url,
        "api_key": fake.key,
        "poll_interval": 0.05,
        "timeout": 1.0,
        **extra,
    }


def _fleet() -> list[FakeNode]:
    return [
        FakeNode.numbered(1, tags=("tag:exo",)),  # this node (100.64.0.1)
        FakeNode.numbered(2, tags=("tag:exo",)),
        FakeNode.numbered(3, tags=("tag:exo", "tag:exo-port-6000")),
        FakeNode.numbered(4, tags=("tag:exo",), online=False),
        FakeNode.numbered(5, tags=("tag:other",)),
        FakeNode.numbered(6, tags=(), valid_tags=(), invalid_tags=("tag:exo",)),
    ]


def _summary(peers: frozenset[PeerCandidate]) -> set[tuple[str, ...]]:
    return {tuple(str(a) for a in p.addresses) for p in peers}


@pytest.mark.anyio
@pytest.mark.parametrize("version", VERSIONS)
async def test_every_version_gives_the_online_tagged_peers(version: str) -> None:
    with FakeHeadscale(version=version, key=KEY, nodes=_fleet()) as fake:
        [peers] = await peer_sets(_plugin(), _config(fake), name="headscale", node=_node_info())
    assert _summary(peers) == {
        ("100.64.0.2:52417", "[fd7a:115c:a1e0::2]:52417"),
        ("100.64.0.3:6000", "[fd7a:115c:a1e0::3]:6000"),
    }
    by_name = {dict(p.metadata)["hostname"]: dict(p.metadata) for p in peers}
    assert by_name["node-2"]["headscale_node_id"] == "2"
    if version.startswith("0.22"):
        assert ("GET", "/api/v1/node") in fake.requests  # tried, then fell back
        assert ("GET", "/api/v1/machine") in fake.requests


@pytest.mark.anyio
async def test_user_filter_all_nodes_of_user_and_legacy_tags() -> None:
    peer = Identity.generate().peer_id
    nodes = [
        FakeNode.numbered(2, user="exo"),  # untagged
        FakeNode.numbered(3, user="bob", tags=("tag:exo",)),
        FakeNode.numbered(
            4, user="exo", valid_tags=(f"tag:exo_peer_id={peer}", "tag:exo_port=7000")
        ),
    ]
    with FakeHeadscale(version="0.23.0", key=KEY, nodes=nodes) as fake:
        [peers] = await peer_sets(
            _plugin(),
            _config(fake, user="exo", all_nodes_of_user=True),
            name="headscale",
            node=_node_info(),
        )
    assert ("GET", "/api/v1/node") in fake.requests
    assert _summary(peers) == {
        ("100.64.0.2:52417", "[fd7a:115c:a1e0::2]:52417"),
        ("100.64.0.4:7000", "[fd7a:115c:a1e0::4]:7000"),
    }
    assert {p.peer_id for p in peers} == {None, PeerId.parse(str(peer))}


def _collect(plugin: HeadscalePlugin, config: dict[str, Any]) -> Any:
    return collecting(plugin, config, name="headscale", node=_node_info())


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for a condition the fake server's thread makes true (no event to wait on)."""
    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - set by another thread
            await anyio.sleep(0.02)


@pytest.mark.anyio
@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_keeps_last_set_and_recovers(
    fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # a valid 10 MB answer takes a while to send and parse on a busy machine: its case tests
    # that size is no fault, not how fast it goes, so its timeout is not the 1 s the others need
    extra = {"timeout": 30.0} if fault == "huge" else {}
    with FakeHeadscale(version="0.29.2", key=KEY, nodes=_fleet(), slow_delay=0.05) as fake:
        async with _collect(_plugin(), _config(fake, **extra)) as sets:
            first = await sets.wait_for(1)
            assert len(first) == 2
            fake.fault = fault
            before = len(fake.requests)
            await _until(lambda: len(fake.requests) >= before + 3, 60 if fault == "huge" else 10)
            await anyio.sleep(0.1)
            if fault == "huge":  # a valid 10 MB answer is fine: same peers, nothing new
                assert sets.items == [first]
                assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
                return
            assert sets.items == [first], "a failing source must not change the set"
            failures = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
            assert len(failures) == 1, failures  # one clear message, not one per poll
            with fake.lock:
                fake.nodes.append(FakeNode.numbered(9, tags=("tag:exo",)))
            fake.fault = None
            second = await sets.wait_for(2, timeout=10)
            assert len(second) == 3
    assert any("answering again" in r.getMessage() for r in caplog.records)


@pytest.mark.anyio
async def test_fault_messages_are_clear() -> None:
    expected = {
        "401": "API key rejected (wrong, expired or lacking permission)",
        "403": "API key rejected",
        "404": "no Headscale API at",
        "500": "Headscale server error: HTTP 500",
        "truncated": "answer is not a Headscale node list",
        "shape": "answer is not a Headscale node list",
        "hang": "no answer from",
        "slow": "no answer from",
    }
    with FakeHeadscale(version="0.29.2", key=KEY, nodes=_fleet()) as fake:
        for fault, text in expected.items():
            fake.fault = fault
            async with HeadscaleClient(
                fake.url, HeadscaleConfig(api_key=KEY).api_key, timeout=0.5
            ) as client:
                with pytest.raises(HeadscaleError) as info:
                    await client.list_wire_nodes()
            assert text in str(info.value), (fault, str(info.value))
            assert info.value.fix
            if fault in ("401", "403"):
                assert info.value.retry_after == 60
        fake.fault = None
        async with HeadscaleClient(fake.url, None) as client:
            with pytest.raises(HeadscaleError, match="no API key configured"):
                await client.list_wire_nodes()
        async with HeadscaleClient(
            fake.url, HeadscaleConfig(api_key=KEY).api_key, max_bytes=1000
        ) as client:
            with pytest.raises(HeadscaleError, match="larger than"):
                await client.list_wire_nodes()
    async with HeadscaleClient(fake.url, None, timeout=2) as client:  # server gone
        with pytest.raises(HeadscaleError, match="cannot reach .*refused") as refused:
            await client.list_wire_nodes()
    assert refused.value.kind == "connect"


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["0.22.3", "0.27.1", "0.28.0"])
async def test_self_register_adds_the_tag_and_keeps_others(version: str) -> None:
    me = FakeNode.numbered(1, tags=("tag:keep",), valid_tags=("tag:advertised",))
    with FakeHeadscale(
        version=version, key=KEY, nodes=[me, FakeNode.numbered(2, tags=("tag:exo",))]
    ) as fake:
        async with _collect(_plugin(), _config(fake, self_register=True)) as sets:
            await sets.wait_for(1)
            await _until(lambda: bool(fake.tag_calls), 5)
            node_id, tags = fake.tag_calls[0]
            assert node_id == 1
            if version == "0.28.0":  # tags replaces the single list, which held both
                assert set(tags) == {"tag:keep", "tag:advertised", "tag:exo"}
            else:  # forced tags only; the advertised (valid) tag stays where it is
                assert set(tags) == {"tag:keep", "tag:exo"}
            api = "machine" if version.startswith("0.22") else "node"
            assert ("POST", f"/api/v1/{api}/1/tags") in fake.requests
            # someone removes it: it is added again
            with fake.lock:
                me.tags = ("tag:keep",)
            await _until(lambda: len(fake.tag_calls) >= 2, 5)
            await anyio.sleep(0.2)
            assert len(fake.tag_calls) == 2  # not re-added while it is there


@pytest.mark.anyio
async def test_idle_without_url_says_how(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    assert await peer_sets(_plugin(), {}, name="headscale", node=_node_info()) == []
    [line] = [r.getMessage() for r in caplog.records if "idle" in r.getMessage()]
    assert "HEADSCALE_API_URL" in line and "api_key" in line


def test_config_rules(tmp_path: Any) -> None:
    def load(table: dict[str, Any], env: dict[str, str] | None = None) -> HeadscaleConfig:
        source = ConfigSource(env=env or {})
        config = source.plugin_config_from("headscale", HeadscaleConfig, table)
        assert isinstance(config, HeadscaleConfig)
        return config

    for bad in ("tag:exo_peer", "tag:1abc", "exo", "tag:a.b", "tag:"):
        with pytest.raises(ConfigError, match="tag"):
            load({"tag": bad})
    for bad in ("ftp://x", "http://", "https://user:pw@h.example", "not a url", "https://h:99999"):
        with pytest.raises(ConfigError, match="api_url"):
            load({"api_url": bad})
    with pytest.raises(ConfigError, match="needs user"):
        load({"all_nodes_of_user": True})
    assert load({"api_url": "https://h.example/"}).api_url == "https://h.example"
    assert load({"api_url": "http://10.0.0.1:8080"}).plain_http_remote
    assert not load({"api_url": "http://127.0.0.1:8080"}).plain_http_remote
    assert not load({"api_url": "http://localhost:8080"}).plain_http_remote
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    from_env = load({}, {"HEADSCALE_API_KEY_FILE": str(key_file), "HEADSCALE_API_URL": "https://h"})
    assert from_env.api_key is not None and from_env.api_key.get_secret_value() == KEY
    from_file = load({"api_key_file": str(key_file)})
    assert from_file.api_key is not None and from_file.api_key.get_secret_value() == KEY
    assert load({}, {"HEADSCALE_API_URL": ""}).api_url is None
    assert load({}, {"HEADSCALE_SELF_ADDRESSES": "100.64.0.9,fd7a:115c:a1e0::9"}).self_addresses


@pytest.mark.anyio
async def test_doctor_reports_and_fixes() -> None:
    plugin = _plugin()
    with FakeHeadscale(version="0.22.3", key=KEY, nodes=_fleet()) as fake:
        context = make_context(plugin, _config(fake), name="headscale", node=_node_info())
        checks = {c.name: c for c in await plugin.doctor(context)}
        assert all(c.ok for c in checks.values()), checks
        assert "machine API" in checks["headscale: server reachable"].detail
        assert (
            "6 visible, 4 members (tag:exo), 3 of them online" in checks["headscale: nodes"].detail
        )
        assert "node 1" in checks["headscale: this node"].detail

        bad = make_context(
            plugin, {**_config(fake), "api_key": "wrong"}, name="headscale", node=_node_info()
        )
        checks = {c.name: c for c in await plugin.doctor(bad)}
        assert not checks["headscale: API key"].ok and checks["headscale: API key"].fix

        fake.nodes = [FakeNode.numbered(7)]
        checks = {c.name: c for c in await plugin.doctor(context)}
        assert not checks["headscale: nodes"].ok and "tag" in checks["headscale: nodes"].fix
    checks = {c.name: c for c in await plugin.doctor(context)}  # server gone
    assert not checks["headscale: server reachable"].ok
    assert checks["headscale: server reachable"].fix
    idle = make_context(plugin, {}, name="headscale", node=_node_info())
    assert [c.ok for c in await plugin.doctor(idle)] == [True]


@pytest.mark.anyio
@pytest.mark.parametrize("version", VERSIONS)
async def test_a_wrong_key_is_a_rejected_key_on_every_version(version: str) -> None:
    """0.22 answers an unknown key with HTTP 500 "Unauthorized" (later versions with 401): the
    doctor and the poll both call it a rejected key, with the key's fix, not a server fault."""
    plugin = _plugin()
    with FakeHeadscale(version=version, key=KEY, nodes=_fleet()) as fake:
        config = {**_config(fake), "api_key": "hskey-wrong"}
        checks = {
            c.name: c for c in await plugin.doctor(make_context(plugin, config, name="headscale"))
        }
        async with HeadscaleClient(
            fake.url, HeadscaleConfig(api_key="hskey-wrong").api_key
        ) as client:
            with pytest.raises(HeadscaleError) as info:
                await client.list_wire_nodes()
    assert checks["headscale: server reachable"].ok
    key = checks["headscale: API key"]
    assert not key.ok and key.detail.startswith("API key rejected"), key.detail
    assert "apikeys create" in key.fix
    assert info.value.kind == "auth" and info.value.retry_after == 60


@pytest.mark.anyio
async def test_answer_size_limit_is_an_option_named_in_the_message() -> None:
    """A node list over max_answer_bytes: the server is reachable and the key accepted; the size
    line fails and names the option to raise; raising it takes the list."""
    plugin = _plugin()
    with FakeHeadscale(version="0.29.2", key=KEY, nodes=_fleet()) as fake:
        small = {**_config(fake), "max_answer_bytes": 64 * 1024}
        fake.fault = "huge"  # the real fleet plus ~10 MB of offline nodes
        checks = {
            c.name: c for c in await plugin.doctor(make_context(plugin, small, name="headscale"))
        }
        assert checks["headscale: server reachable"].ok
        assert checks["headscale: API key"].ok
        size = checks["headscale: node list size"]
        assert not size.ok
        assert "is larger than max_answer_bytes (65536 bytes); refused" in size.detail
        assert size.fix.startswith("raise max_answer_bytes in [plugins.headscale]")
        big = {**small, "max_answer_bytes": 64 * 1024 * 1024}
        [peers] = await peer_sets(plugin, big, name="headscale", node=_node_info(), timeout=30)
        assert len(peers) == 2
    with pytest.raises(ConfigError, match="max_answer_bytes"):
        ConfigSource(env={}).plugin_config_from(
            "headscale", HeadscaleConfig, {"max_answer_bytes": 10}
        )


@pytest.mark.anyio
async def test_the_key_never_shows(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every log line (DEBUG, all loggers incl. httpx), stdout/stderr, reprs and errors."""
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []
    plugin = _plugin()
    nodes = [FakeNode.numbered(1), *_fleet()[1:]]  # this node, untagged: self_register acts
    with FakeHeadscale(version="0.27.1", key="hskey-the-right-one", nodes=nodes) as fake:
        config = {**_config(fake), "api_key": KEY, "self_register": True}
        context = make_context(plugin, config, name="headscale", node=_node_info())
        seen += [repr(context.config), str(context.config), repr(context)]
        async with _collect(plugin, config) as sets:  # 401 every poll
            await _until(lambda: len(fake.requests) >= 3, 5)
            assert sets.items == []
        for check in await plugin.doctor(context):
            print(check.model_dump_json())
            seen.append(repr(check))
        fake.fault = "500"
        async with HeadscaleClient(fake.url, context.config.api_key) as client:
            seen.append(repr(client))
            for fault in ("500", "404", "truncated", None):
                fake.fault = fault
                try:
                    await client.list_wire_nodes()
                except HeadscaleError as exc:
                    seen += [str(exc), repr(exc), exc.fix]
        # the key accepted, self-registration and a set_tags failure all logged
        fake.key = KEY
        fake.fault = None
        async with _collect(plugin, config) as sets:
            await sets.wait_for(1)
            await _until(lambda: bool(fake.tag_calls), 5)
    with pytest.raises(ConfigError) as bad:
        ConfigSource(env={"HEADSCALE_API_KEY": KEY}).plugin_config_from(
            "headscale", HeadscaleConfig, {"tag": "bad"}
        )
    seen.append(str(bad.value))
    out, err = capsys.readouterr()
    logs = [r.getMessage() for r in caplog.records] + [caplog.text]
    assert any("API key rejected" in line for line in logs)
    assert any(r.name == "httpx" for r in caplog.records)  # httpx's own logging was captured
    for text in [*seen, *logs, out, err]:
        assert KEY not in text
        assert "1234567890" not in text
