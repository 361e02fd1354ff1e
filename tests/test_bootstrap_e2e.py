"""Real node processes joined by the installed ``bootstrap`` plugin alone, on loopback.

Why: the point of bootstrap is that naming one node is enough, in any start order. Dialing and
redialing a peer that comes up later is the node's job; this checks that the plugin keeps
reporting the candidate so it can, and that a node given its own address skips it.
"""

from __future__ import annotations

import importlib.util
import socket
import time
from pathlib import Path

import pytest

HAVE_NODES = importlib.util.find_spec("tests.support.nodes") is not None
pytestmark = pytest.mark.skipif(not HAVE_NODES, reason="tests/support/nodes.py not there yet")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_three_nodes_join_through_the_first_in_any_start_order(tmp_path: Path) -> None:
    from tests.support.nodes import fleet

    port_a = free_port()
    common = [
        "--plugins",
        "bootstrap",
        "--listen-host",
        "127.0.0.1",
        "--namespace",
        "boot-e2e",
        "--bootstrap-refresh-interval",
        "0.2",
    ]
    with fleet(tmp_path / "nodes") as nodes:
        # B first: A is not up yet, so B's dials fail until it is; the plugin keeps reporting A.
        b = nodes.start("b", *common, "--port", "0", "--bootstrap-peers", f"127.0.0.1:{port_a}")
        time.sleep(1.0)
        # A gets the same list as everyone: its own address, which it must skip.
        a = nodes.start(
            "a", *common, "--port", str(port_a), "--bootstrap-peers", f"127.0.0.1:{port_a}"
        )
        c = nodes.start(
            "c",
            *common,
            "--port",
            "0",
            "--bootstrap-peers",
            f"/ip4/127.0.0.1/tcp/{port_a}/p2p/{a.peer_id}",
        )
        assert b.wait_for("connected", timeout=15, peer_id=a.peer_id)
        assert c.wait_for("connected", timeout=15, peer_id=a.peer_id)
        a.wait_for("connected", timeout=15, peer_id=b.peer_id)
        a.wait_for("connected", timeout=15, peer_id=c.peer_id)
        time.sleep(0.5)
        for node in (a, b, c):
            assert node.count("plugin_error") == 0, node.log_tail()
        assert a.count("connected", peer_id=a.peer_id) == 0
        assert a.count("peer_discovered", sources=["bootstrap"]) == 0  # its own address only
        assert "is this node's own address" in a.log_path.read_text()


def test_a_pinned_peer_id_refuses_a_different_peer(tmp_path: Path) -> None:
    from exo_discovery_core.identity import Identity
    from tests.support.nodes import fleet

    port_a = free_port()
    common = ["--plugins", "bootstrap", "--listen-host", "127.0.0.1", "--namespace", "boot-pin"]
    stranger = Identity.generate().peer_id
    with fleet(tmp_path / "nodes") as nodes:
        a = nodes.start("a", *common, "--port", str(port_a))
        b = nodes.start(
            "b",
            *common,
            "--port",
            "0",
            "--bootstrap-peers",
            f"/ip4/127.0.0.1/tcp/{port_a}/p2p/{stranger}",
        )
        b.wait_for("peer_discovered", timeout=10, peer_id=stranger)
        time.sleep(2.0)
        assert b.count("connected", peer_id=a.peer_id) == 0
        assert a.count("connected", peer_id=b.peer_id) == 0
