"""A connected peer moves to a better path when one appears, without ever going down: two real
node processes in network namespaces, joined by the lab's LAN and, later, by a second link.

The lab's LAN is veth on a bridge: link class "other" (no NIC behind it). The second link is a
veth pair straight between the two namespaces, addressed in Tailscale's range, so its path is
class "tailscale", better than "other" by the documented order (the class of an address in
Tailscale's ranges comes from the range). The node learns of the second address from its
bootstrap peers file, re-read every round.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.netns import NetnsLab
from tests.support.nodes import NodeFleet

pytestmark = pytest.mark.netns

PORT = 52417
A_TS, B_TS = "100.64.213.1", "100.64.213.2"


def test_a_better_path_is_taken_without_a_disconnect(
    netns_lab: Callable[[int], NetnsLab], nodes: NodeFleet, tmp_path: Path
) -> None:
    lab = netns_lab(2)
    a_host, b_host = lab.hosts
    b = nodes.start(
        "b",
        "--plugins",
        "bootstrap",
        "--port",
        str(PORT),
        "--no-exchange",
        prefix=["ip", "netns", "exec", b_host.netns],
    )
    peers = tmp_path / "peers.txt"
    peers.write_text(f"/ip4/{b_host.ipv4}/tcp/{PORT}/p2p/{b.peer_id}\n")
    a = nodes.start(
        "a",
        "--plugins",
        "bootstrap",
        "--port",
        str(PORT),
        "--no-exchange",
        "--bootstrap-peers-file",
        str(peers),
        "--bootstrap-refresh-interval",
        "0.3",
        prefix=["ip", "netns", "exec", a_host.netns],
    )
    first = a.wait_for("connected", timeout=20, peer_id=b.peer_id)
    assert first["address"] == f"{b_host.ipv4}:{PORT}"
    assert first["link"] == "other" and first["rtt_ms"] > 0
    b.wait_for("connected", timeout=10, peer_id=a.peer_id)

    # the second link: a veth pair straight from a to b, in Tailscale's range
    lab.run(
        a_host,
        [
            "ip",
            "link",
            "add",
            "ts-a",
            "type",
            "veth",
            "peer",
            "name",
            "ts-b",
            "netns",
            b_host.netns,
        ],
    )
    for host, name, ip in ((a_host, "ts-a", A_TS), (b_host, "ts-b", B_TS)):
        lab.run(host, ["ip", "addr", "add", f"{ip}/24", "dev", name])
        lab.run(host, ["ip", "link", "set", name, "up"])
    peers.write_text(
        f"/ip4/{b_host.ipv4}/tcp/{PORT}/p2p/{b.peer_id}\n/ip4/{B_TS}/tcp/{PORT}/p2p/{b.peer_id}\n"
    )

    moved = a.wait_for("path_changed", timeout=20, peer_id=b.peer_id)
    assert moved["address"] == f"{B_TS}:{PORT}" and moved["link"] == "tailscale"
    assert moved["rtt_ms"] > 0
    seen = b.wait_for("path_changed", timeout=10, peer_id=a.peer_id)  # b sees the move too
    assert seen["address"].startswith(f"{A_TS}:")
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "exo_discovery_core",
            "peers",
            "--json",
            "--state-dir",
            str(a.state_dir),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    [row] = json.loads(shown.stdout)["peers"]
    assert (row["address"], row["link"]) == (f"{B_TS}:{PORT}", "tailscale") and row["rtt_ms"] > 0
    for node, other in ((a, b), (b, a)):
        node.drain()
        assert node.count("disconnected", peer_id=other.peer_id) == 0, node.name
        assert node.count("connected", peer_id=other.peer_id) == 1, node.name
        assert node.connected_peers() == {other.peer_id}
