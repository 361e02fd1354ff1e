"""The members view and the one-shot commands, as a user runs them: ``peers`` (why a peer does
not connect, round-trip time, route, filters, 80 columns), ``discover`` and ``run --wait-for``."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from exo_discovery_core import members
from exo_discovery_core.status import PeerRow
from tests.support.cli import RunningNode, exo_discovery

BOOTSTRAP = {"EXO_DISCOVERY_PLUGINS": "bootstrap"}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def status_until(home: Path, ready: Any, timeout: float = 20.0) -> dict[str, Any]:
    """``peers --json`` of the node in ``home`` once ``ready(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        result = exo_discovery(home, "peers", "--json")
        if result.returncode == 0:
            status = json.loads(result.stdout)
            if ready(status):
                return status
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(0.1)


def start(running: list[RunningNode], home: Path, *args: str, **env: str) -> RunningNode:
    home.mkdir(parents=True, exist_ok=True)
    node = RunningNode(home, *args, env={**BOOTSTRAP, **env})
    running.append(node)
    node.wait_for("started")
    return node


def test_peers_says_why_each_known_peer_does_not_connect(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    a = start(running, tmp_path / "a")
    lab = start(running, tmp_path / "lab", "--namespace", "lab")
    a_port, lab_port, dead = a.events[0]["port"], lab.events[0]["port"], closed_port()
    peers = ",".join(f"127.0.0.1:{p}" for p in (a_port, lab_port, dead))
    home = tmp_path / "b"
    start(running, home, "--bootstrap-peers", peers)

    def settled(status: dict[str, Any]) -> bool:
        rows = status["peers"]
        return len(rows) == 3 and all(r["state"] == "connected" or r["last_reason"] for r in rows)

    status = status_until(home, settled)
    by_address = {r["addresses"][0]: r for r in status["peers"]}
    refused = by_address[f"127.0.0.1:{lab_port}"]
    assert refused["last_reason"] == (
        f"127.0.0.1:{lab_port}: namespace 'lab' is not ours ('exo') "
        "(refused: tried again every 30 s)"
    )
    assert refused["retry_in"] >= 20  # a refusal is not pressed: 30 s, not the redial backoff
    down = by_address[f"127.0.0.1:{dead}"]
    assert down["last_reason"] == f"127.0.0.1:{dead}: connection refused"
    assert down["retry_in"] <= 2.0  # redial_max: a peer that is not up yet is tried again soon

    shown = exo_discovery(home, "peers", env={"COLUMNS": "80"})
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(map(len, lines)) <= 80, lines
    assert lines[1].split() == ["PEER", "HOST", "STATE", "ROUTE", "LINK", "RTT", "SEEN", "SOURCES"]
    assert "  ↳ next try in " in shown.stdout and ": namespace 'lab' is not ours" in shown.stdout
    assert f"127.0.0.1:{dead}: connection refused" in shown.stdout

    connected = json.loads(exo_discovery(home, "peers", "--state", "connected", "--json").stdout)
    assert [r["peer_id"] for r in connected["peers"]] == [a.events[0]["peer_id"]]
    known = json.loads(exo_discovery(home, "peers", "--state", "known", "--json").stdout)
    assert {r["state"] for r in known["peers"]} == {"known"} and len(known["peers"]) == 2


def test_round_trip_time_route_and_last_seen_come_from_the_heartbeats(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    a = start(running, tmp_path / "a")
    home = tmp_path / "b"
    start(running, home, "--bootstrap-peers", f"127.0.0.1:{a.events[0]['port']}")
    status = status_until(home, lambda s: any(r["rtt_ms"] is not None for r in s["peers"]))
    [row] = status["peers"]
    assert row["peer_id"] == a.events[0]["peer_id"] and row["state"] == "connected"
    assert 0 < row["rtt_ms"] < 1000, row  # loopback, measured through two event loops
    assert row["route"] == "loopback"
    assert time.time() - row["last_seen"] < 5  # a heartbeat a second
    shown = exo_discovery(home, "peers").stdout
    assert f"{a.events[0]['peer_id'][:12]}  " in shown and "ms" in shown and "  now  " in shown


def test_discover_prints_what_it_found_and_exits(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    a = start(running, tmp_path / "a")
    at = f"127.0.0.1:{a.events[0]['port']}"
    home = tmp_path / "scripts"
    home.mkdir()
    found = exo_discovery(
        home, "discover", "--timeout", "3", "--json", "--bootstrap-peers", at, env=BOOTSTRAP
    )
    assert found.returncode == 0, found.stderr
    [row] = json.loads(found.stdout)
    assert row["peer_id"] == a.events[0]["peer_id"] and row["state"] == "connected"
    text = exo_discovery(home, "discover", "--timeout", "2", "--bootstrap-peers", at, env=BOOTSTRAP)
    assert text.returncode == 0 and text.stdout.startswith("1 peer found in 2 s\n")
    assert not (home / "state").exists(), "discover used a state dir of its own, not this one"


def test_run_wait_for_exits_0_with_a_ready_line_or_1_saying_why_not(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    a = start(running, tmp_path / "a")
    at = f"127.0.0.1:{a.events[0]['port']}"
    home = tmp_path / "b"
    home.mkdir()
    args = ["run", "--listen-host", "127.0.0.1", "--port", "0", "--wait-for", "1"]
    ready = exo_discovery(home, *args, "--timeout", "30", "--bootstrap-peers", at, env=BOOTSTRAP)
    assert ready.returncode == 0, ready.stderr
    [line] = [x for x in ready.stdout.splitlines() if x.startswith("ready: ")]
    assert line.startswith("ready: 1 peer connected in ") and a.events[0]["peer_id"][:12] in line

    dead = closed_port()
    late = exo_discovery(
        home, *args, "--timeout", "2", "--bootstrap-peers", f"127.0.0.1:{dead}", env=BOOTSTRAP
    )
    assert late.returncode == 1
    assert late.stderr.splitlines()[:2] == [
        "error: 0 of 1 peers connected within 2 s",
        f"  next try in {late.stderr.split('next try in ')[1].split(' s:')[0]} s: "
        f"127.0.0.1:{dead}: connection refused",
    ]
    as_json = exo_discovery(
        home, *args, "--timeout", "30", "--json", "--bootstrap-peers", at, env=BOOTSTRAP
    )
    assert as_json.returncode == 0
    assert all(json.loads(x) for x in as_json.stdout.splitlines())  # the ready line: on stderr
    assert as_json.stderr.startswith("ready: 1 peer connected")


def _row(peer_id: str | None, state: str = "connected", **fields: Any) -> PeerRow:
    base: dict[str, Any] = {
        "peer_id": peer_id,
        "addresses": ["192.168.1.20:52417"],
        "sources": ["mdns", "exchange"],
        "state": state,
    }
    return PeerRow.model_validate({**base, **fields})


def test_short_ids_are_the_shortest_unique_prefixes() -> None:
    a, b = "12D3KooWAbcdEFGH" + "x" * 36, "12D3KooWAbcdEFGz" + "y" * 36
    c = "12D3KooWQrst" + "z" * 40
    assert members.short_ids([a, b, c]) == {a: a[:16], b: b[:16], c: c[:12]}


@pytest.mark.parametrize("width", [80, 100, 160, 40])
def test_the_members_table_fits_the_width(width: int) -> None:
    now = time.time()
    rows = [
        _row(
            "12D3KooW" + "A" * 44,
            metadata={"hostname": "a-very-long-host-name-of-the-gpu-box.example.com"},
            rtt_ms=0.42,
            route="lan",
            last_seen=now,
        ),
        _row(
            None,
            state="known",
            addresses=["[fd7a:115c:a1e0:ab12:4843:cd96:6258:b240]:52417"],
            sources=["headscale", "bootstrap", "mdns"],
            last_reason="[fd7a:115c:a1e0:ab12:4843:cd96:6258:b240]:52417: no answer within 3 s",
            retry_in=1.5,
        ),
    ]
    lines = members.render(rows, width, now)
    assert all(len(line) <= max(width, 80) for line in lines), lines
    assert lines[1].split()[0] == "12D3KooWAAAA" and lines[1].split()[1].startswith("a-very")
    assert lines[-1].startswith("  ↳ next try in 1.5 s: [fd7a:115c")
    assert ("ADDRESS" in lines[0]) is (width >= 120)
