"""Bounded degree: 100 members with ``max_connections = 8``, beside serf's 100 agents.

The mechanism of :mod:`.bench_scale` (member 0 first, the other N-1 told only its address, all
with one cluster key; serf with ``-retry-join`` and its gossip key), with every exo-discovery
node keeping at most 8 connections. A node's member list is its peer table (what ``peers``
lists), replayed from its ``peer_*`` events. Figures, each beside serf's 100 agents measured in
the same run by :func:`.bench_scale._measure`:

- last started -> every member lists all N-1 others (serf: sees all N-1 members);
- fleet CPU at rest over 10 s after that (% of one core, all N processes);
- connections per member at the end, and RSS per member.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import serf
from .bench_scale import REST_WINDOW_S, _fleet_cpu, _measure, exo_system, serf_system
from .common import Deadline, Event, Fleet, Row, median

NAME = "bounded"
COUNT = 100
LIMIT = 8
MESH_TARGET_S = 5.0
MESH_WAIT_S = 90.0
CONFIG = f"""[node]
max_connections = {LIMIT}
# every member is listed by each relay: the exchange's bounds must hold the whole cluster
exchange_peers_per_sender = {COUNT}
exchange_peers_max = {2 * COUNT}
"""
_KNOWN = ("peer_discovered", "peer_identified", "peer_updated")


def _member_list(events: list[Event], want: int) -> tuple[int, float | None]:
    """The member list's size at the end, and when it last grew to ``want`` (None: not full)."""
    members: set[str] = set()
    full_at: float | None = None
    for event in events:
        kind, peer_id = event.get("event"), event.get("peer_id")
        if peer_id is None or kind not in (*_KNOWN, "peer_lost"):
            continue
        if kind == "peer_lost":
            members.discard(str(peer_id))
        else:
            members.add(str(peer_id))
        if len(members) >= want and full_at is None:
            full_at = float(event["_mono"])
        elif len(members) < want:
            full_at = None
    return len(members), full_at


def _ours(deadline: Deadline) -> dict[str, object]:
    want = COUNT - 1
    with tempfile.TemporaryDirectory(prefix="exo-bench-bounded-") as tmp:
        config = Path(tmp) / "bounded.toml"
        config.write_text(CONFIG)
        system = exo_system("--config", str(config))
        with Fleet(f"{NAME}{COUNT}") as fleet:
            first = system.first(fleet, "n00")
            first.wait_started(deadline.left(30))
            rest = [system.join(fleet, f"n{i:02}", first.address) for i in range(1, COUNT)]
            members = [first, *rest]
            last_started = max(m.wait_started(deadline.left(180))["_mono"] for m in members)
            progress: list[str] = []
            wall0 = next_report = time.monotonic()
            end = wall0 + deadline.left(MESH_WAIT_S)
            while time.monotonic() < end:
                sizes = sorted(_member_list(m.snapshot(), want)[0] for m in members)
                if time.monotonic() >= next_report:
                    progress.append(f"+{time.monotonic() - wall0:.0f}s: min {sizes[0]}, "
                                    f"median {sizes[COUNT // 2]}")  # fmt: skip
                    next_report += 10.0
                if sizes[0] >= want:
                    break
                time.sleep(0.5)
            time.sleep(1.0)  # still all of them a moment later
            full = [_member_list(m.snapshot(), want)[1] for m in members]
            conns = sorted(len(m.connected_peers()) for m in members)
            rss = [m.rss_mib() for m in members]
            cpu1, wall1 = _fleet_cpu(members), time.monotonic()
            time.sleep(REST_WINDOW_S)
            rest_cpu = 100 * (_fleet_cpu(members) - cpu1) / (time.monotonic() - wall1)
    meshed = all(f is not None for f in full)
    return {
        "mesh": max(f for f in full if f is not None) - last_started if meshed else None,
        "rest_cpu": rest_cpu,
        "rss": rss,
        "conns": (conns[0], conns[-1]),
        "progress": "; ".join(progress),
    }


def run() -> list[Row]:
    deadline = Deadline(590, NAME)
    ours = _ours(deadline)
    try:
        serf.binary()
        try:
            theirs = _measure(serf_system(), COUNT, deadline)
        except TimeoutError:  # free_port() races among 200 ports: one more try
            theirs = _measure(serf_system(), COUNT, deadline)
        reference, why = theirs.system, ""
    except serf.SerfMissing as exc:
        theirs, reference, why = None, f"serf: not run ({exc})", str(exc)
    except TimeoutError as exc:  # an agent that did not start (e.g. its port taken meanwhile)
        first_line = str(exc).splitlines()[0]
        theirs, reference, why = None, f"serf: failed ({first_line})", first_line
    mesh = ours["mesh"]
    assert mesh is None or isinstance(mesh, float)
    rest_cpu, rss, conns = ours["rest_cpu"], ours["rss"], ours["conns"]
    assert isinstance(rest_cpu, float) and isinstance(rss, list) and isinstance(conns, tuple)
    label = f"{COUNT} members, max_connections = {LIMIT}"
    serf_note = f"; {theirs.summary()}" if theirs else f"; {why}"
    return [
        Row(NAME, f"{label}: last started -> every member lists all {COUNT - 1} others",
            mesh, "s", reference, theirs.mesh if theirs else None, max_value=MESH_TARGET_S,
            status="ok" if mesh is not None else f"not listed within {MESH_WAIT_S:g} s "
            "(❌ target missed)",
            note=f"ours: connections per member at the end min {conns[0]}, max {conns[1]}; "
            f"member lists: {ours['progress']}{serf_note}"),
        Row(NAME, f"{label}: fleet CPU at rest ({REST_WINDOW_S:g} s)", rest_cpu, "%",
            reference, theirs.rest_cpu if theirs else None, max_ratio=1.0,
            note=f"% of one core, all {COUNT} processes together ({rest_cpu / COUNT:.2f} % each)"),
        Row(NAME, f"{label}: RSS per member, median", median(rss), "MiB", reference,
            median(theirs.rss) if theirs else None,
            note=f"VmRSS, min {min(rss):.1f} MiB, max {max(rss):.1f} MiB"),
    ]  # fmt: skip
