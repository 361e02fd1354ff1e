"""Three zenoh hosts (examples/zenoh-host: exo's transport, zenoh's scouting off) as processes on
loopback, meeting by exo-discovery alone: hosts 2 and 3 know only host 1's discovery address."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tests.support.nodes import NodeFleet, NodeProcess, fleet

pytestmark = pytest.mark.slow

HOST = [sys.executable, "-m", "exo_zenoh_host"]
MESH_DEADLINE = 30.0  # three processes starting on a shared 2-core machine


def start(hosts: NodeFleet, name: str, *args: str) -> NodeProcess:
    return hosts.start(
        name,
        "--namespace",
        "zlab",
        "--plugins",
        "bootstrap",
        *args,
        command=HOST,
        ready="ready",
        stdin=True,
    )


def wait_for_zenoh_peers(host: NodeProcess, expected: set[str], timeout: float) -> None:
    """Until the host says its zenoh session sees exactly ``expected`` (by their tokens)."""
    deadline = time.monotonic() + timeout
    while True:
        event = host.wait_for("zenoh_peers", timeout=max(deadline - time.monotonic(), 0.01))
        if set(event["peers"]) == expected:
            return


def test_a_publication_reaches_both_other_hosts_after_discovery_alone(tmp_path: Path) -> None:
    with fleet(tmp_path) as hosts:
        first = start(hosts, "h1")
        second = start(hosts, "h2", "--bootstrap-peers", first.address)
        third = start(hosts, "h3", "--bootstrap-peers", first.address)
        everyone = [first, second, third]
        for host in everyone:
            others = {other.peer_id for other in everyone if other is not host}
            wait_for_zenoh_peers(host, others, MESH_DEADLINE)

        first.send("publish hello from h1")
        for host in (second, third):
            received = host.wait_for("received", timeout=10, sender=first.peer_id)
            assert received["text"] == "hello from h1"
            assert received["key"] == f"exo-zenoh-host/zlab/msg/{first.peer_id}"

        third.stop()
        for host in (first, second):
            gone = host.wait_for("peer_gone", timeout=10, peer_id=third.peer_id)
            assert gone["reason"]
            survivor = second if host is first else first
            wait_for_zenoh_peers(host, {survivor.peer_id}, 10)


def test_zenohs_own_scouting_is_off() -> None:
    from exo_zenoh_host.link import config

    cfg = config("1a2b", "tcp/127.0.0.1:7447", ["tcp/127.0.0.1:7448"])
    assert cfg.get_json("scouting/multicast/enabled") == "false"
    assert cfg.get_json("scouting/gossip/enabled") == "false"
    assert cfg.get_json("adminspace/enabled") == "false"
    assert cfg.get_json("mode") == '"peer"'
