"""``max_connections`` with real node processes on loopback: few connections, every member known.

Twelve nodes, each told only the first one's address, each keeping at most three connections:
through the relayed signed records every node lists the eleven others, read from its status
socket (what ``exo-discovery peers --json`` prints); a stopped member leaves every list, and so
does a frozen one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import anyio

from exo_discovery_core.connections import PROBE_SILENT_AFTER
from exo_discovery_core.status import Status, query
from tests.support.nodes import NodeFleet, NodeProcess

COUNT = 12
LIMIT = 3


def status_of(node: NodeProcess) -> Status:
    return anyio.run(query, node.state_dir)


def members(status: Status) -> set[str]:
    return {row.peer_id for row in status.peers if row.peer_id is not None}


def connections(status: Status) -> set[str]:
    return {row.peer_id for row in status.peers if row.state == "connected" and row.peer_id}


def start(nodes: NodeFleet, env: dict[str, str]) -> list[NodeProcess]:
    """COUNT nodes keeping at most LIMIT connections, each told only the first one's address."""
    args = ["--plugins", "static", "--listen-host", "127.0.0.1", "--port", "0"]
    limit = ["--max-connections", str(LIMIT)]
    first = nodes.start("n0", *args, *limit, env=env)
    return [first] + [
        nodes.start(f"n{i}", *args, *limit, "--static-peers", first.address, env=env)
        for i in range(1, COUNT)
    ]


def meshed(among: list[NodeProcess], ids: set[str]) -> Callable[[], str | None]:
    """A check: each of ``among`` lists exactly the others of ``among`` (of the fleet's
    ``ids``) and keeps at most LIMIT connections, and those connections join them all."""
    want = {node.peer_id for node in among}

    def check() -> str | None:
        graph: dict[str, set[str]] = {}
        for node in among:
            status = status_of(node)
            graph[node.peer_id] = connections(status) & want
            listed = members(status) & ids
            if listed != want - {node.peer_id}:
                missing, extra = want - {node.peer_id} - listed, listed - want
                rows = [row for row in status.peers if row.peer_id in extra]
                return f"{node.name} lists not {sorted(missing)} but {rows}: {status}"
            if len(connections(status)) > LIMIT:
                return f"{node.name} has {len(connections(status))} connections (limit {LIMIT})"
        reached, todo = set(), [among[0].peer_id]
        while todo:  # the connections join every member: no group is cut off from the rest
            reached.add(peer := todo.pop())
            todo += [
                p for p in graph[peer] | {q for q in graph if peer in graph[q]} if p not in reached
            ]
        if reached != want:
            return f"the connections do not join {sorted(want - reached)} to the rest: {graph}"
        return None

    return check


def until(check: Callable[[], str | None], timeout: float) -> None:
    """Poll ``check`` (None: holds; else what is still wrong) until it holds or the deadline.
    A failure says what was wrong over the whole wait, not only at its last poll (which may
    catch a connection within its second before the trim while the real fault, a group cut
    off, lasted the whole wait)."""
    started, kind = time.monotonic(), ""
    changes: list[str] = []  # what was wrong, each time that changed (by its first words)
    while (wrong := check()) is not None:
        elapsed = time.monotonic() - started
        if wrong[:40] != kind:
            kind = wrong[:40]
            changes.append(f"at {elapsed:.1f} s: {wrong[:400]}")
        assert elapsed < timeout, "\n".join(changes[-8:])
        time.sleep(0.25)


def test_twelve_nodes_with_three_connections_each_list_all_members_and_drop_a_stopped_one(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    fleet = start(nodes, static_plugin_env)
    first = fleet[0]
    ids = {node.peer_id for node in fleet}
    until(meshed(fleet, ids), timeout=30)
    for node in fleet:  # a member it is not connected to is known through the exchange
        status = status_of(node)  # (a connection past the limit lives 1 s: not counted here)
        known = [row for row in status.peers if row.peer_id in ids and row.state == "known"]
        assert len(known) + len(connections(status) & ids) == COUNT - 1, node.name
        relayed = [row for row in known if row.peer_id != first.peer_id]  # first: configured
        assert all("exchange" in row.sources for row in relayed), (node.name, relayed)
        node.drain()
        assert node.count("peer_discovered") >= len(known), node.name

    gone = fleet[5]
    gone.stop()
    rest = [node for node in fleet if node is not gone]
    until(meshed(rest, ids), timeout=30)  # the eleven others again, and not the stopped one


def test_a_frozen_member_leaves_every_list_through_the_failure_report(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    """A ``SIGSTOP``ped member keeps its sockets open (the kernel answers for it): the peer it
    heartbeats finds it silent, probes it, drops it and reports it gone; the report, relayed
    hop by hop, makes every node connected to it probe it too and every other node forget it.
    Within 20 s, before the quiet probe of silent connections (the backstop, 60 s) could."""
    fleet = start(nodes, static_plugin_env)
    ids = {node.peer_id for node in fleet}
    until(meshed(fleet, ids), timeout=30)
    frozen = fleet[5]
    frozen.proc.send_signal(signal.SIGSTOP)
    try:
        rest = [node for node in fleet if node is not frozen]
        assert PROBE_SILENT_AFTER > 20
        until(meshed(rest, ids), timeout=20)
    finally:
        frozen.proc.send_signal(signal.SIGCONT)
