"""Bootstrap SRV entries and file_sd peers files: parsing, and the plugin with an injected SRV
resolver for what a real DNS server cannot be made to do on cue (fail, answer ".", change).
The real DNS server is in test_bootstrap_srv_netns.py."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from exo_discovery_bootstrap import BadEntry, BadPeersFile, BootstrapPlugin, parse_entry
from exo_discovery_bootstrap.peersfile import parse_peers_file
from exo_discovery_bootstrap.srv import best_first
from exo_discovery_core.identity import Identity
from exo_discovery_core.testing import collecting, make_context, node_info

SERVICE = "_exo-discovery._tcp.example.com"
PEER = Identity.generate().peer_id
NODE = node_info(port=40001, interfaces=())  # no interfaces: no record is this node by accident


def test_srv_names_parse_and_take_no_port() -> None:
    entry = parse_entry("_Exo-Discovery._tcp.Example.COM.")
    assert (entry.kind, entry.host, entry.port, entry.is_srv) == ("srv", SERVICE, 0, True)
    with pytest.raises(BadEntry, match="an SRV name takes no port"):
        parse_entry(f"{SERVICE}:52417")
    with pytest.raises(BadEntry, match="is not a valid DNS name"):
        parse_entry("_exo._tcp.bad..name")


def test_srv_records_best_first_and_dot_means_none() -> None:
    records = [
        (10, 5, "b.example", 2),
        (0, 1, "c.example", 3),
        (0, 9, "A.example", 1),
        (0, 0, ".", 4),
        (20, 0, "a.example", 1),
    ]
    assert best_first(records) == [("a.example", 1), ("c.example", 3), ("b.example", 2)]


class Srv:
    """An SRV resolver the test steers: ``records[name]`` or an ``OSError`` for ``failing``."""

    def __init__(self) -> None:
        self.records: dict[str, list[tuple[str, int]]] = {}
        self.failing: set[str] = set()
        self.asked = 0
        self._asked = anyio.Event()

    async def wait_asked(self, count: int) -> None:
        with anyio.fail_after(10):
            while self.asked < count:
                await self._asked.wait()

    async def __call__(self, name: str) -> list[tuple[str, int]]:
        self.asked += 1
        self._asked.set()
        self._asked = anyio.Event()
        if name in self.failing:
            raise OSError(0, "no such name")
        return self.records.get(name, [])


async def fixed_a(name: str, port: int, family: Any) -> list[str]:
    return {"r1.example.com": ["10.0.0.1"], "r2.example.com": ["10.0.0.2", "fd00::2"]}[name]


def _plugin(srv: Srv) -> BootstrapPlugin:
    return BootstrapPlugin(resolver=fixed_a, srv_resolver=srv)


def _shown(peers: frozenset[Any]) -> set[tuple[str, ...]]:
    return {tuple(map(str, p.addresses)) for p in peers}


@pytest.mark.anyio
async def test_srv_asked_every_round_failures_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    srv = Srv()
    srv.records[SERVICE] = [("r1.example.com", 6001)]
    config = {"peers": [SERVICE, "10.9.9.9:1"], "refresh_interval": 0.02}
    context = make_context(_plugin(srv), config, name="bootstrap", node=NODE)
    async with collecting(_plugin(srv), context=context) as sets:
        assert _shown(await sets.wait_for(1)) == {("10.0.0.1:6001",), ("10.9.9.9:1",)}
        srv.records[SERVICE] = [("r1.example.com", 6001), ("r2.example.com", 6002)]
        assert _shown(await sets.wait_for(2)) == {
            ("10.0.0.1:6001",),
            ("10.0.0.2:6002",),
            ("[fd00::2]:6002",),
            ("10.9.9.9:1",),
        }
        srv.failing.add(SERVICE)
        assert _shown(await sets.wait_for(3)) == {("10.9.9.9:1",)}  # the rest stays
        await srv.wait_asked(srv.asked + 5)  # failing round after round: still one warning
        srv.failing.clear()
        assert len(await sets.wait_for(4)) == 4
    warned = [r.getMessage() for r in caplog.records if "cannot resolve" in r.getMessage()]
    assert warned == [f"cannot resolve {SERVICE!r} (SRV): no such name; retrying every round"]
    assert any(f"{SERVICE!r} (SRV) resolves again" in r.getMessage() for r in caplog.records)
    peer = next(p for p in sets.items[-1] if "10.0.0.1:6001" in map(str, p.addresses))
    assert dict(peer.metadata) == {"bootstrap": SERVICE}


@pytest.mark.anyio
async def test_doctor_shows_the_records() -> None:
    srv = Srv()
    srv.records[SERVICE] = [("r1.example.com", 6001)]
    plugin = _plugin(srv)
    context = make_context(
        plugin, {"peers": [SERVICE, "_none._tcp.example.com"]}, name="bootstrap", node=NODE
    )
    checks = await plugin.doctor(context)
    assert [c.ok for c in checks] == [True, False]
    assert "1 record(s): r1.example.com:6001" in checks[0].detail
    assert "give '_none._tcp.example.com' SRV records" in checks[1].fix


# -- file_sd ---------------------------------------------------------------------------------

FILE_SD_JSON = f"""[
  {{"targets": ["10.0.0.2:52417", "gpu.lan:52417"], "labels": {{"rack": "a"}}}},
  {{"targets": ["/ip4/10.0.0.9/tcp/7000", "{SERVICE}"], "labels": {{"peer_id": "{PEER}"}}}}
]
"""
FILE_SD_YAML = f"""# generated by the inventory
- targets: ["10.0.0.2:52417", gpu.lan:52417]
  labels:
    rack: a
- targets:
    - /ip4/10.0.0.9/tcp/7000
    - {SERVICE}
  labels: {{peer_id: {PEER}}}
"""


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("sd.json", FILE_SD_JSON),
        ("sd.yaml", FILE_SD_YAML),
        ("sd", FILE_SD_YAML),
        ("sd.yml", FILE_SD_YAML),
    ],
)
def test_file_sd_targets_and_labels(name: str, content: str) -> None:
    entries = parse_peers_file(Path(name), content)
    shown = [(e.kind, e.host, e.port, e.peer_id, dict(e.labels)) for e in entries]
    assert shown == [
        ("ip4", "10.0.0.2", 52417, None, {"rack": "a"}),
        ("dns", "gpu.lan", 52417, None, {"rack": "a"}),
        ("ip4", "10.0.0.9", 7000, PEER, {}),  # peer_id is the identity, not metadata
        ("srv", SERVICE, 0, PEER, {}),
    ]


def test_yaml_list_of_peers() -> None:
    entries = parse_peers_file(Path("peers.yaml"), "- 10.0.0.2:52417\n- /ip6/::1/tcp/9\n")
    assert [e.multiaddr for e in entries] == ["/ip4/10.0.0.2/tcp/52417", "/ip6/::1/tcp/9"]
    assert parse_peers_file(Path("peers.yaml"), "# nobody yet\n") == []


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "sd.json",
            '[{"targets": "10.0.0.2:1"}]',
            "sd.json: not a list of target groups: at 0/targets",
        ),
        ("sd.json", '[{"targets": ["10.0.0.2:1"], "labels": {"bad-name": "x"}}]', "at 0/labels/?"),
        (
            "sd.json",
            '[{"targets": ["10.0.0.2:1"], "labels": {"peer_id": "nope"}}]',
            "sd.json line 1: bad bootstrap peer '10.0.0.2:1': label 'peer_id'",
        ),
        ("sd.yaml", "- targets: [a:1\n", "sd.yaml line 2: not valid YAML"),
        ("sd.yaml", "- &x 10.0.0.2:1\n- *x\n", "YAML aliases (*name) are not allowed"),
        ("sd.yaml", "peers: 1\n", "a YAML peers file must be a list"),
        (
            "sd.yaml",
            "- targets: ['10.0.0.2:99999']\n",
            "sd.yaml line 1: bad bootstrap peer '10.0.0.2:99999': port 99999",
        ),
    ],
)
def test_bad_file_sd_names_file_and_place(name: str, content: str, expected: str) -> None:
    with pytest.raises(BadPeersFile) as info:
        parse_peers_file(Path(name), content)
    assert expected in str(info.value)
