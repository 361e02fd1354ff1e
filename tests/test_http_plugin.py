"""The http plugin against a real HTTP server on loopback: the http_sd format, the refresh
header both ways, the bearer token (a secret), and faults that keep the last good list."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from exo_discovery_core import Address, NodeInfo, PeerCandidate, SourceError
from exo_discovery_core.config import ConfigError, ConfigSource
from exo_discovery_core.identity import Identity
from exo_discovery_core.testing import collecting, make_context, peer_sets
from exo_discovery_http import HttpConfig, HttpPlugin, HttpSource
from exo_discovery_http.source import REFRESH_HEADER
from tests.support.http_sd import SdServer

TOKEN = "sd-token-SECRET-0123456789"
PEER = Identity.generate().peer_id
NODE = NodeInfo(
    peer_id=Identity.generate().peer_id,
    namespace="test",
    port=52417,
    listen_addresses=(Address(host="127.0.0.1", port=52417),),
)
GROUPS: list[dict[str, Any]] = [
    {"targets": ["10.0.0.2:6000", "[fd00::2]:6001", "gpu-box.lan"], "labels": {"rack": "a"}},
    {"targets": ["10.0.0.9:7000", "10.0.1.9:7000"], "labels": {"peer_id": str(PEER), "x": "y"}},
]


def _config(sd: SdServer, **extra: Any) -> dict[str, Any]:
    return {"url": sd.url + "/sd?job=exo", "refresh_interval": 0.05, "timeout": 1.0, **extra}


def _addresses(peers: frozenset[PeerCandidate]) -> set[tuple[str, ...]]:
    return {tuple(str(a) for a in p.addresses) for p in peers}


@pytest.mark.anyio
async def test_targets_and_labels_become_candidates() -> None:
    with SdServer() as sd:
        sd.serve(GROUPS)
        [peers] = await peer_sets(HttpPlugin(), _config(sd), name="http", node=NODE)
    assert _addresses(peers) == {
        ("10.0.0.2:6000",),
        ("[fd00::2]:6001",),
        ("gpu-box.lan:52417",),  # no port: this node's port
        ("10.0.0.9:7000", "10.0.1.9:7000"),  # peer_id label: one peer, both addresses
    }
    pinned = [p for p in peers if p.peer_id is not None]
    assert [p.peer_id for p in pinned] == [PEER]
    assert pinned[0].metadata == (("x", "y"),)
    assert {p.metadata for p in peers if p.peer_id is None} == {(("rack", "a"),)}


@pytest.mark.anyio
async def test_bad_target_skips_only_itself_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    groups = [
        {"targets": ["10.0.0.2:6000", "10.0.0.3:99999", "bad host:1"]},
        {"targets": ["10.0.0.4:1"], "labels": {"peer_id": "not-a-peer-id"}},
    ]
    with SdServer() as sd:
        sd.serve(groups)
        async with collecting(HttpPlugin(), _config(sd), name="http", node=NODE) as sets:
            peers = await sets.wait_for(1)
            await sd.wait_requests(len(sd.requests) + 3)
    assert _addresses(peers) == {("10.0.0.2:6000",)}
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 3, skipped  # three problems, each once although polled again
    assert any("group 0 target 1" in m for m in skipped)
    assert any("label 'peer_id'" in m for m in skipped)


@pytest.mark.anyio
async def test_request_carries_refresh_interval_and_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with SdServer(token=TOKEN) as sd:
        sd.serve(GROUPS)
        config = _config(sd, bearer_token_file=str(token_file), refresh_interval=7.5)
        [peers] = await peer_sets(HttpPlugin(), config, name="http", node=NODE)
    assert len(peers) == 4
    request = sd.requests[0]
    assert request[REFRESH_HEADER] == "7.5"
    assert request["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.anyio
async def test_server_refresh_header_sets_the_interval() -> None:
    """refresh_interval is an hour, but the server asks for 0.1 s: the change comes at once."""
    with SdServer() as sd:
        sd.serve(GROUPS[:1], **{REFRESH_HEADER: "0.1"})
        config = _config(sd, refresh_interval=3600, min_refresh_interval=0.1)
        async with collecting(HttpPlugin(), config, name="http", node=NODE) as sets:
            assert len(await sets.wait_for(1)) == 3
            sd.serve(GROUPS, **{REFRESH_HEADER: "0.1"})
            assert len(await sets.wait_for(2)) == 4
        assert sd.requests[-1][REFRESH_HEADER] == "0.1"  # and says so on every request


@pytest.mark.anyio
async def test_server_refresh_header_is_bounded() -> None:
    with SdServer() as sd:
        for said, expected in [
            ("0.0001", 1.0),
            ("1e9", 3600.0),
            ("nan", 30.0),
            ("-4", 30.0),
            ("soon", 30.0),
            ("12", 12.0),
        ]:
            sd.serve(GROUPS, **{REFRESH_HEADER: said})
            async with HttpSource(HttpConfig(url=sd.url)) as source:
                await source.fetch()
                assert source.interval == expected, said


@pytest.mark.anyio
async def test_token_never_shows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SdServer(token="another-token") as sd:
        sd.serve(GROUPS)
        config = HttpConfig(url=sd.url + "/sd?secret=q", bearer_token=TOKEN, timeout=10.0)
        context = make_context(HttpPlugin(), config, name="http", node=NODE)
        [check] = await HttpPlugin().doctor(context)
        async with HttpSource(config) as source:
            shown = [repr(config), str(config), repr(source), config.model_dump_json()]
    assert not check.ok
    assert "token rejected: HTTP 401" in check.detail
    assert "bearer_token_file" in check.fix
    for text in [*shown, check.detail, check.fix, caplog.text]:
        assert TOKEN not in text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("exo_discovery")]
    for text in [check.detail, check.fix, *ours]:
        assert "secret=q" not in text  # our messages leave out the query, which may hold a key


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("bad_json", "not a list of target groups"),
        ("shape", "not a list of target groups"),
        ("500", "HTTP 500 from"),
        ("html", "is not JSON (Content-Type 'text/html')"),
        ("redirect", "redirects (HTTP 302)"),
        ("hang", "no answer from"),
        ("huge", "larger than max_answer_bytes (65536 bytes)"),
        ("lying_length", "larger than max_answer_bytes"),
        ("endless", "larger than max_answer_bytes"),
        ("too_many", "more than the limit of 50"),
    ],
)
async def test_fault_keeps_the_last_good_list_and_recovers(
    fault: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    health: list[tuple[bool, str]] = []
    with SdServer() as sd:
        sd.serve(GROUPS[:1])
        config = _config(sd, max_answer_bytes=65536, max_targets=50, timeout=0.5)
        context = make_context(
            HttpPlugin(),
            config,
            name="http",
            node=NODE,
            report_health=lambda ok, m: health.append((ok, m)),
        )
        async with collecting(HttpPlugin(), context=context) as sets:
            assert len(await sets.wait_for(1)) == 3
            _inject(sd, fault)
            before = len(sd.requests)
            await sd.wait_requests(before + 2)
            with anyio.fail_after(10):
                while not any(not ok and message in m for ok, m in health):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            sd.serve(GROUPS)  # fixed, with a new list: the next set must be it
            assert len(await sets.wait_for(2)) == 4
            assert len(sets.items) == 2
    failures = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
    assert len(failures) == 1, failures  # logged once, not on every poll
    assert message in failures[0]
    assert "keeping the last good result" in failures[0]
    assert any("answering again" in r.getMessage() for r in caplog.records)


def _inject(sd: SdServer, fault: str) -> None:
    with sd.lock:
        sd.status, sd.fault = 200, None
        if fault == "bad_json":
            sd.body = b'[{"targets": ["10.0.0.2:1"'
        elif fault == "shape":
            sd.body = b'{"targets": ["10.0.0.2:1"]}'
        elif fault == "500":
            sd.status, sd.body = 500, b"oops"
        elif fault == "html":
            sd.headers = {"Content-Type": "text/html"}
            sd.body = b"<html>login</html>"
        elif fault == "redirect":
            sd.status, sd.headers = 302, {"Location": "http://127.0.0.1:1/"}
        elif fault == "huge":
            sd.body = b"[" + b'{"targets": []},' * 10_000 + b"{}]"
        elif fault == "too_many":
            sd.body = b'[{"targets": [' + b'"127.0.0.1:1",' * 60 + b'"127.0.0.1:2"]}]'
        else:
            sd.fault = fault


@pytest.mark.anyio
async def test_server_down_is_one_clear_line() -> None:
    with SdServer() as sd:
        url = sd.url  # a port that was just closed: nothing listens there now
    async with HttpSource(HttpConfig(url=url, timeout=2.0)) as source:
        with pytest.raises(SourceError) as info:
            await source.fetch()
    assert str(info.value) == f"cannot reach {url}: connection refused"
    assert "check url" in info.value.fix


def test_config_errors_name_the_key() -> None:
    source = ConfigSource(env={"EXO_HTTP_SD_URL": "ftp://x"})
    with pytest.raises(ConfigError) as info:
        source.plugin_config_from("http", HttpConfig, {})
    assert "EXO_HTTP_SD_URL" in str(info.value) and "http:// or https://" in str(info.value)
    with pytest.raises(ConfigError) as info:
        ConfigSource(env={}).plugin_config_from("http", HttpConfig, {"url": "http://u:p@h/"})
    assert "must not hold credentials" in str(info.value)


@pytest.mark.anyio
async def test_idle_without_url() -> None:
    assert await peer_sets(HttpPlugin(), {}, name="http", count=1, timeout=2) == []
