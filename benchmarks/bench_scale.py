"""Scale: N node processes on loopback, each told only the first one's address (N = 20, then 50).

Node 0 starts first (``--port P``); then the other N-1 are spawned at once, every one with
``--plugins bootstrap --bootstrap-peers 127.0.0.1:P``. Peer exchange should bring every node to
N-1 connected peers. Figure: from the last node's ``started`` to the moment the last node reached
N-1 connected peers (replayed from each node's connected/disconnected events, ``_mono``), checked
to still hold one second later. Reference: the start-up cost, i.e. the wall time from node 0's
spawn to the last of the N printing ``started`` (node 0 alone, then N-1 in parallel).
Also: RSS per node (/proc/<pid>/status VmRSS), the CPU the fleet burns while meshing and at rest,
and (in this process) what reading one peer-exchange announcement costs a node.
"""

from __future__ import annotations

import json
import os
import time

from exo_discovery_core import exchange
from exo_discovery_core.config import NodeConfig
from exo_discovery_core.identity import Identity
from exo_discovery_core.models import Address
from exo_discovery_core.peertable import PeerTable

from .common import Deadline, Event, Fleet, Node, Row, free_port, median

HEARTBEAT_S = NodeConfig().heartbeat_interval

NAME = "scale"
SIZES = (20, 50)
TARGET_S = 2.0  # for 50 nodes
MESH_WAIT_S = {20: 45.0, 50: 75.0}
REST_WINDOW_S = 5.0


def _full_at(events: list[Event], want: int) -> float | None:
    """When the connected set last grew to ``want`` peers (None if it is not full at the end)."""
    peers: set[str] = set()
    full_at: float | None = None
    for event in events:
        kind = event.get("event")
        if kind == "connected":
            peers.add(str(event["peer_id"]))
        elif kind == "disconnected":
            peers.discard(str(event["peer_id"]))
        else:
            continue
        if len(peers) >= want and full_at is None:
            full_at = float(event["_mono"])
        elif len(peers) < want:
            full_at = None
    return full_at


def _fleet_cpu(nodes: list[Node]) -> float:
    return sum(n.cpu_seconds() for n in nodes)


def _mesh(count: int, deadline: Deadline) -> list[Row]:
    want = count - 1
    label = f"{count} nodes"
    with Fleet(f"{NAME}{count}") as fleet:
        port = free_port()
        args = ("--bootstrap-peers", f"127.0.0.1:{port}")
        first = fleet.start("n00", "--port", str(port), *args, plugins="bootstrap")
        first.wait_started(deadline.left(30))
        rest = [fleet.start(f"n{i:02}", *args, plugins="bootstrap") for i in range(1, count)]
        nodes: list[Node] = [first, *rest]
        started = [n.wait_started(deadline.left(120))["_mono"] for n in nodes]
        last_started = max(started)
        startup = last_started - first.spawned_at
        batch_startup = last_started - min(n.spawned_at for n in rest)
        cpu0, wall0 = _fleet_cpu(nodes), time.monotonic()
        progress: list[str] = []
        next_report = wall0
        mesh_end = time.monotonic() + deadline.left(MESH_WAIT_S[count])
        while time.monotonic() < mesh_end:
            counts = sorted(len(n.connected_peers()) for n in nodes)
            if time.monotonic() >= next_report:
                progress.append(f"+{time.monotonic() - wall0:.0f}s: min {counts[0]}, "
                                f"median {counts[len(counts) // 2]}, max {counts[-1]}")  # fmt: skip
                next_report += 10.0
            if counts[0] >= want:
                break
            time.sleep(0.2)
        mesh_cpu = 100 * (_fleet_cpu(nodes) - cpu0) / (time.monotonic() - wall0)
        load = os.getloadavg()[0]
        time.sleep(1.0)  # a duplicate settled late would show as a disconnect by now
        full = [_full_at(n.snapshot(), want) for n in nodes]
        counts = sorted(len(n.connected_peers()) for n in nodes)
        rss = [n.rss_mib() for n in nodes]
        cpu1, wall1 = _fleet_cpu(nodes), time.monotonic()
        time.sleep(REST_WINDOW_S)
        rest_cpu = 100 * (_fleet_cpu(nodes) - cpu1) / (time.monotonic() - wall1)
        reasons: dict[str, int] = {}
        for node in nodes:
            for event in node.snapshot():
                if event.get("event") == "disconnected":
                    reason = str(event.get("reason"))
                    reasons[reason] = reasons.get(reason, 0) + 1
    meshed = all(f is not None for f in full)
    mesh = max(f for f in full if f is not None) - last_started if meshed else None
    waited = MESH_WAIT_S[count]
    churn = ", ".join(f"{n} x {r!r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
    rows = [
        Row(NAME, f"{label}: last started -> every node has all {want} peers", mesh, "s",
            f"start-up: node 0 spawned -> all {count} started", startup,
            max_value=TARGET_S if count == 50 else None,
            status="ok" if meshed else f"not meshed within {waited:g} s (❌ target missed)",
            note=(f"{count - 1} spawned at once took {batch_startup:.2f} s to all print 'started'; "
                  f"fleet CPU while meshing {mesh_cpu:.0f} % of one core (load avg {load:.1f}); "
                  f"disconnects: {churn or 'none'}; peers per node at the end: min {counts[0]}, "
                  f"max {counts[-1]}; progress: {'; '.join(progress)}")),
        Row(NAME, f"{label}: RSS per node, median", median(rss), "MiB",
            note=f"VmRSS, min {min(rss):.1f} MiB, max {max(rss):.1f} MiB"),
        Row(NAME, f"{label}: fleet CPU after the mesh wait" + ("" if meshed else " (still churning)"),
            rest_cpu, "%",
            note=f"% of one core over {REST_WINDOW_S:g} s, all {count} processes together "
            f"({rest_cpu / count:.2f} % each); heartbeats every {HEARTBEAT_S:g} s on up to "
            f"{count * want // 2:,} connections"),
    ]  # fmt: skip
    return rows


def _exchange_cost(peers: int = 49, runs: int = 200) -> Row:
    """One node's work for one ``peers`` frame from a peer with ``peers`` peers: the parsing
    (exchange.read) and the table update the node does on every such frame."""
    ids = [Identity.generate().peer_id for _ in range(peers + 2)]
    frame = exchange.announcement(
        [(pid, Address(host="127.0.0.1", port=40000 + i)) for i, pid in enumerate(ids[:peers])]
    )
    message = json.loads(json.dumps(frame))
    sender, me = ids[peers], ids[peers + 1]
    sender_address = Address(host="127.0.0.1", port=1)
    table = PeerTable()
    t0 = time.perf_counter()
    for _ in range(runs):
        exchange.read(message, sender=sender, sender_address=sender_address, me=me)
    read = (time.perf_counter() - t0) / runs
    candidates = exchange.read(message, sender=sender, sender_address=sender_address, me=me)
    exchanged = {pid: candidates for pid in ids[:peers]}  # what a node meshed with all holds
    t0 = time.perf_counter()
    for _ in range(runs):
        merged = {c.key: c for cands in exchanged.values() for c in cands}
        table.replace(exchange.SOURCE, merged.values())
        table.merged()
    update = (time.perf_counter() - t0) / runs
    return Row(NAME, f"one peer-exchange frame of {peers} peers: parse + table update",
               read + update, "s",
               note=f"exchange.read {read * 1e3:.2f} ms + re-merging the {peers} x {peers - 1} "
               f"exchanged candidates {update * 1e3:.2f} ms, in this process; every node gets "
               "such a frame from every peer after each change of that peer's connections")  # fmt: skip


def run() -> list[Row]:
    deadline = Deadline(230, NAME)
    rows: list[Row] = []
    for count in SIZES:
        rows += _mesh(count, deadline)
    return [*rows, _exchange_cost()]
