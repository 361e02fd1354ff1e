"""Bounded degree: 100 members with ``max_connections = 8``, beside serf's 100 agents.

The mechanism of :mod:`.bench_scale` (member 0 first, the other N-1 told only its address, all
with one cluster key; serf with ``-retry-join`` and its gossip key), with every exo-discovery
node keeping at most 8 connections. A node's member list is what ``peers`` lists: its peer
table, replayed from its ``peer_*`` events, and its connections (a peer that dialed it and that
no one relayed yet is in no table). Figures, each beside serf's 100 agents measured in the same
run by :func:`.bench_scale._measure`:

- last started -> every member lists all N-1 others (serf: sees all N-1 members);
- fleet CPU over 10 s right after that (% of one core, all N processes), while connections may
  still be trimmed to the limit; and at rest, over 10 s once no member connected or disconnected
  for 5 s (serf's second window as long after its first);
- connections per member at the end, and RSS per member.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import serf
from .bench_scale import (
    REST_WINDOW_S,
    _measure,
    _member_list,
    _window_cpu,
    exo_system,
    serf_system,
)
from .common import Deadline, Fleet, Member, Row, median

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
SETTLE_QUIET_S = 5.0  # at rest: no member connected or disconnected for this long ...
SETTLE_WAIT_S = 60.0  # ... waited for at most this long


def _settle(members: list[Member], deadline: Deadline) -> bool:
    """Wait until no member's connections changed for ``SETTLE_QUIET_S`` (the trims to
    ``max_connections`` done); False if they still changed after ``SETTLE_WAIT_S``."""

    def changes() -> int:
        kinds = ("connected", "disconnected")
        return sum(1 for m in members for e in m.snapshot() if e.get("event") in kinds)

    end = time.monotonic() + deadline.left(SETTLE_WAIT_S)
    seen, quiet_since = changes(), time.monotonic()
    while time.monotonic() < end:
        time.sleep(1.0)
        now_seen = changes()
        if now_seen != seen:
            seen, quiet_since = now_seen, time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_QUIET_S:
            return True
    return False


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
            rest_cpu = _window_cpu(members)  # right after: the trims may still be settling
            rest_end = time.monotonic()
            settled = _settle(members, deadline)
            settle_after = time.monotonic() - rest_end
            settled_cpu = _window_cpu(members)
    meshed = all(f is not None for f in full)
    return {
        "mesh": max(f for f in full if f is not None) - last_started if meshed else None,
        "rest_cpu": rest_cpu,
        "settled": settled,
        "settle_after": settle_after,
        "settled_cpu": settled_cpu,
        "rss": rss,
        "conns": (conns[0], conns[-1]),
        "progress": "; ".join(progress),
    }


def run() -> list[Row]:
    deadline = Deadline(590, NAME)
    ours = _ours(deadline)
    settle_after = ours["settle_after"]
    assert isinstance(settle_after, float)
    try:
        serf.binary()
        try:
            theirs = _measure(serf_system(), COUNT, deadline, settle_after)
        except TimeoutError:  # free_port() races among 200 ports: one more try
            theirs = _measure(serf_system(), COUNT, deadline, settle_after)
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
    settled_cpu, settled = ours["settled_cpu"], ours["settled"]
    assert isinstance(settled_cpu, float)
    wait = (f"{settle_after + SETTLE_QUIET_S:.0f} s after the first window no member had connected "
            f"or disconnected for {SETTLE_QUIET_S:g} s" if settled else
            f"❌ members still connected or disconnected {SETTLE_WAIT_S:g} s after the first window")  # fmt: skip
    label = f"{COUNT} members, max_connections = {LIMIT}"
    serf_note = f"; {theirs.summary()}" if theirs else f"; {why}"
    return [
        Row(NAME, f"{label}: last started -> every member lists all {COUNT - 1} others",
            mesh, "s", reference, theirs.mesh if theirs else None, max_value=MESH_TARGET_S,
            status="ok" if mesh is not None else f"not listed within {MESH_WAIT_S:g} s "
            "(❌ target missed)",
            note=f"ours: connections per member at the end min {conns[0]}, max {conns[1]}; "
            f"member lists: {ours['progress']}{serf_note}"),
        Row(NAME, f"{label}: fleet CPU in the {REST_WINDOW_S:g} s after every member lists all",
            rest_cpu, "%", reference, theirs.rest_cpu if theirs else None,
            note=f"% of one core, all {COUNT} processes together ({rest_cpu / COUNT:.2f} % each); "
            "the connections may still be trimmed to the limit"),
        Row(NAME, f"{label}: fleet CPU at rest ({REST_WINDOW_S:g} s, connections settled)",
            settled_cpu, "%", reference, theirs.settled_cpu if theirs else None, max_ratio=1.0,
            note=f"% of one core ({settled_cpu / COUNT:.2f} % each); {wait}; serf's window "
            "as long after its first one"),
        Row(NAME, f"{label}: RSS per member, median", median(rss), "MiB", reference,
            median(theirs.rss) if theirs else None,
            note=f"VmRSS, min {min(rss):.1f} MiB, max {max(rss):.1f} MiB"),
    ]  # fmt: skip
