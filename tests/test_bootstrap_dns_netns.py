"""A bootstrap DNS name with several A records, resolved by the real system resolver in real
node processes: each address is a candidate, so one name reaches every replica (a Kubernetes
headless service, a Compose service with replicas).

The name lives in the hosts file of the test's own network namespace: ``ip netns exec`` mounts
``/etc/netns/<ns>/hosts`` over ``/etc/hosts`` for the processes it starts, so nothing of the
machine's own resolver configuration is touched.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.netns import NetnsLab
from tests.support.nodes import NodeFleet

pytestmark = pytest.mark.netns

NAME = "exo-peers.test"
PORT = "52417"


def test_a_name_with_three_addresses_reaches_all_three_nodes(
    netns_lab: Callable[[int], NetnsLab], nodes: NodeFleet
) -> None:
    lab = netns_lab(4)
    dialer, *replicas = lab.hosts
    etc = Path("/etc/netns") / dialer.netns
    etc.mkdir(parents=True, exist_ok=True)
    try:
        lines = ["127.0.0.1 localhost", *(f"{r.ipv4} {NAME}" for r in replicas)]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        common = ["--plugins", "bootstrap", "--port", PORT, "--no-exchange"]
        started = [
            nodes.start(f"r{i}", *common, prefix=["ip", "netns", "exec", r.netns])
            for i, r in enumerate(replicas)
        ]
        joiner = nodes.start(
            "dialer",
            *common,
            "--bootstrap-peers",
            f"{NAME}:{PORT}",
            prefix=["ip", "netns", "exec", dialer.netns],
        )
        for replica in started:
            joiner.wait_for("connected", timeout=15, peer_id=replica.peer_id)
            replica.wait_for("connected", timeout=5, peer_id=joiner.peer_id)
        assert joiner.connected_peers() == {r.peer_id for r in started}
        found = {
            a
            for e in joiner.events
            if e.get("event") in ("peer_discovered", "peer_identified", "peer_updated")
            for a in e["addresses"]
        }
        assert {f"{r.ipv4}:{PORT}" for r in replicas} <= found
    finally:
        shutil.rmtree(etc, ignore_errors=True)
