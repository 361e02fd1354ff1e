"""Scale: N members on loopback, each told only the first one's address, beside serf's N agents.

For each N (20, then 50) the same measurement runs twice in one run, on exo-discovery nodes
(``--plugins bootstrap --bootstrap-peers 127.0.0.1:P``, all with one cluster key, so every
connection is the sealed v2 channel) and on hashicorp serf agents (``-retry-join 127.0.0.1:P``,
with their gossip key, see ``benchmarks/serf.py``): member 0 starts first, then the other
N-1 at once. Figures, each beside serf's from the same run:

- last started -> every member sees all N-1 others (replayed from each member's
  connected/disconnected events, stamped ``_mono`` on arrival; checked to still hold 1 s later);
- last started -> every member lists all N-1 others: its member list (what ``peers`` lists: the
  peer table, replayed from its ``peer_*`` events, and its connections), as serf's members are
  its list, whether connected yet or not;
- fleet CPU at rest, over 10 s after that, all N processes together (% of one core);
- RSS per member (VmRSS, median);
- disconnects of live peers while meshing and at rest (every member is alive until the kill);
- ``kill -9`` of one member, then ``SIGSTOP`` of another -> every other member reports it gone
  (the worst of the N-1 reports; serf reports ``EventMemberFailed``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exo_discovery_core import clusterkey
from exo_discovery_core.config import NodeConfig

from . import serf
from .common import Deadline, Event, Fleet, Member, Row, free_port, median

HEARTBEAT_S = NodeConfig().heartbeat_interval

NAME = "scale"
SIZES = (20, 50)
MESH_TARGET_S = 2.0  # for 50 members, and <= 2x serf's
MESH_WAIT_S = {20: 45.0, 50: 75.0, 100: 90.0}
REST_WINDOW_S = 10.0
KILL_TARGET_S = 0.1
STOP_TARGET_S = 3.0  # and <= 0.5x serf's
GONE_WAIT_S = 40.0  # serf's suspicion timeout grows with log(N); ours is dead_after


@dataclass
class Outcome:
    """What one system showed at one size."""

    system: str
    count: int
    startup: float  # member 0 spawned -> all N started
    mesh: float | None  # last started -> every member sees all (None: not within the wait)
    listed: float | None  # last started -> every member lists all (its member list)
    mesh_cpu: float  # % of one core while meshing
    rss: list[float]
    rest_cpu: float
    disconnects: dict[str, int]  # reason -> count, before the kill: every peer was alive
    killed: float | None  # kill -9 -> the last of the others reports it gone
    stopped: float | None  # SIGSTOP -> the same
    progress: list[str] = field(default_factory=list)
    ends: tuple[int, int] = (0, 0)  # peers per member at the end: min, max
    complaints: list[str] = field(default_factory=list)  # the first warnings any member logged
    settled_cpu: float | None = None  # % of one core over a second window ``settle_after`` later

    def summary(self) -> str:
        """Start-up, meshing and what went wrong, for a row's note."""
        said = f"; first warnings: {' | '.join(self.complaints)}" if self.complaints else ""
        return (f"{self.system}: start-up (member 0 spawned -> all {self.count} started) "
                f"{self.startup:.2f} s; fleet CPU while meshing {self.mesh_cpu:.0f} % of one core; "
                f"peers per member at the end: min {self.ends[0]}, max {self.ends[1]}; "
                f"progress: {'; '.join(self.progress)}{said}")  # fmt: skip


@dataclass(frozen=True)
class System:
    """How to start a member: the first one listens at ``address``; the rest join it."""

    label: str
    first: Callable[[Fleet, str], Member]
    join: Callable[[Fleet, str, str], Member]
    listed_at: Callable[[list[Event], int], float | None]  # when its member list was full


def exo_system(*args: str) -> System:
    """``args``: more ``run`` options for every member (e.g. ``--config`` of bench_bounded)."""
    # with a cluster key, as serf runs with its gossip key: the sealed v2 channel is what is measured
    env = {"EXO_DISCOVERY_CLUSTER_KEY": clusterkey.encode(clusterkey.generate())}

    def first(fleet: Fleet, name: str) -> Member:
        port = free_port()
        return fleet.start(name, *args, "--port", str(port), "--bootstrap-peers",
                           f"127.0.0.1:{port}", plugins="bootstrap", env=env)  # fmt: skip

    def join(fleet: Fleet, name: str, address: str) -> Member:
        return fleet.start(name, *args, "--bootstrap-peers", address, plugins="bootstrap", env=env)

    def listed_at(events: list[Event], want: int) -> float | None:
        return _full_at(events, want, listed=True)

    return System("exo-discovery", first, join, listed_at)


def serf_system() -> System:
    key = serf.cluster_key()
    return System(
        f"serf {serf.version()}",
        lambda fleet, name: serf.start(fleet, name, key),
        lambda fleet, name, address: serf.start(fleet, name, key, join=address),
        _full_at,  # serf's member list is its members, alive: what its events replay
    )


_LISTED = ("peer_discovered", "peer_identified", "peer_updated")  # the peer table's events


def _full_at(events: list[Event], want: int, *, listed: bool = False) -> float | None:
    """When the connected set (``listed``: the member list, what ``peers`` shows: the peer
    table and the connections, a peer that dialed us being in no table) last grew to ``want``
    peers; None if it is not that full at the end."""
    return _replay(events, want, listed=listed)[1]


def _member_list(events: list[Event], want: int) -> tuple[int, float | None]:
    """The member list's size at the end, and when it last grew to ``want``."""
    return _replay(events, want, listed=True)


def _replay(events: list[Event], want: int, *, listed: bool) -> tuple[int, float | None]:
    connected: set[str] = set()
    table: set[str] = set()
    full_at: float | None = None
    for event in events:
        kind, peer_id = event.get("event"), event.get("peer_id")
        if peer_id is None:
            continue
        if kind == "connected":
            connected.add(str(peer_id))
        elif kind == "disconnected":
            connected.discard(str(peer_id))
        elif listed and kind in _LISTED:
            table.add(str(peer_id))
        elif listed and kind == "peer_lost":
            table.discard(str(peer_id))
        else:
            continue
        size = len(connected | table) if listed else len(connected)
        if size >= want and full_at is None:
            full_at = float(event["_mono"])
        elif size < want:
            full_at = None
    return len(connected | table) if listed else len(connected), full_at


def _fleet_cpu(members: list[Member]) -> float:
    return sum(m.cpu_seconds() for m in members)


def _window_cpu(members: list[Member]) -> float:
    """The fleet's CPU over the next ``REST_WINDOW_S``, in % of one core."""
    cpu, wall = _fleet_cpu(members), time.monotonic()
    time.sleep(REST_WINDOW_S)
    return 100 * (_fleet_cpu(members) - cpu) / (time.monotonic() - wall)


def _gone(victim: Member, others: list[Member], sig: int, deadline: Deadline) -> float | None:
    """Send ``sig`` to ``victim``; seconds until the last of ``others`` reports it gone."""
    marks = [m.mark() for m in others]
    sent = time.monotonic()
    os.kill(victim.pid, sig)
    until = sent + deadline.left(GONE_WAIT_S)
    worst = 0.0
    for member, mark in zip(others, marks, strict=True):
        try:
            event = member.wait_for("disconnected", max(0.0, until - time.monotonic()),
                                    start=mark, peer_id=victim.peer_id)  # fmt: skip
        except TimeoutError:
            return None
        worst = max(worst, float(event["_mono"]) - sent)
    return worst


def _measure(
    system: System, count: int, deadline: Deadline, settle_after: float | None = None
) -> Outcome:
    """One fleet of ``system``; with ``settle_after``, the rest CPU is measured a second time
    that many seconds after the first window (as long as the other system took to settle)."""
    want = count - 1
    with Fleet(f"{NAME}{count}") as fleet:
        first = system.first(fleet, "n00")
        first.wait_started(deadline.left(30))
        rest = [system.join(fleet, f"n{i:02}", first.address) for i in range(1, count)]
        members = [first, *rest]
        last_started = max(m.wait_started(deadline.left(120))["_mono"] for m in members)
        cpu0, wall0 = _fleet_cpu(members), time.monotonic()
        progress: list[str] = []
        next_report = wall0
        mesh_end = time.monotonic() + deadline.left(MESH_WAIT_S[count])
        while time.monotonic() < mesh_end:
            counts = sorted(len(m.connected_peers()) for m in members)
            if time.monotonic() >= next_report:
                progress.append(f"+{time.monotonic() - wall0:.0f}s: min {counts[0]}, "
                                f"median {counts[len(counts) // 2]}, max {counts[-1]}")  # fmt: skip
                next_report += 10.0
            if counts[0] >= want:
                break
            time.sleep(0.2)
        mesh_cpu = 100 * (_fleet_cpu(members) - cpu0) / (time.monotonic() - wall0)
        time.sleep(1.0)  # a duplicate settled late would show as a disconnect by now
        full = [_full_at(m.snapshot(), want) for m in members]
        listed = [system.listed_at(m.snapshot(), want) for m in members]
        counts = sorted(len(m.connected_peers()) for m in members)
        rss = [m.rss_mib() for m in members]
        rest_cpu = _window_cpu(members)
        settled_cpu = None
        if settle_after is not None:
            time.sleep(settle_after)
            settled_cpu = _window_cpu(members)
        disconnects: dict[str, int] = {}
        for member in members:
            for event in member.snapshot():
                if event.get("event") == "disconnected":
                    reason = str(event.get("reason"))
                    disconnects[reason] = disconnects.get(reason, 0) + 1
        complaints = [line.strip()[:200] for m in members for line in m.complaints()][:3]
        killed = _gone(members[-1], members[:-1], signal.SIGKILL, deadline)
        stopped = _gone(members[-2], members[:-2], signal.SIGSTOP, deadline)
    meshed = all(f is not None for f in full)
    mesh = max(f for f in full if f is not None) - last_started if meshed else None
    all_listed = None if None in listed else max(f for f in listed if f is not None) - last_started
    return Outcome(system.label, count, last_started - first.spawned_at, mesh, all_listed,
                   mesh_cpu, rss, rest_cpu, disconnects, killed, stopped, progress,
                   (counts[0], counts[-1]), complaints, settled_cpu)  # fmt: skip


def _churn(disconnects: dict[str, int]) -> str:
    ordered = sorted(disconnects.items(), key=lambda x: -x[1])
    return ", ".join(f"{n} x {r!r}" for r, n in ordered) or "none"


def _rows(ours: Outcome, ref: Outcome | None, why_no_ref: str) -> list[Row]:
    """One row per figure: ours, with serf's from the same run as the reference."""
    count = ours.count
    big = count >= 50
    reference = ref.system if ref else f"serf: not run ({why_no_ref})"

    def ref_of(value: Callable[[Outcome], float | None]) -> float | None:
        return value(ref) if ref else None

    def status(value: float | None, what: str) -> str:
        return "ok" if value is not None else f"{what} (❌ target missed)"

    label = f"{count} members"
    ref_note = f" {ref.summary()}; disconnects: {_churn(ref.disconnects)}" if ref else ""
    return [
        Row(NAME, f"{label}: last started -> every member sees all {count - 1} others",
            ours.mesh, "s", reference, ref_of(lambda o: o.mesh),
            max_value=MESH_TARGET_S if big else None, max_ratio=2.0 if big else None,
            status=status(ours.mesh, f"not meshed within {MESH_WAIT_S[count]:g} s"),
            note=f"{ours.summary()}.{ref_note}"),
        Row(NAME, f"{label}: last started -> every member lists all {count - 1} others",
            ours.listed, "s", reference, ref_of(lambda o: o.listed),
            status=status(ours.listed, f"not listed within {MESH_WAIT_S[count]:g} s"),
            note="the member list (ours: what `peers` lists, the peer table from signed "
            "records and the connections; serf: its members), as serf's members are its list"),
        Row(NAME, f"{label}: fleet CPU at rest ({REST_WINDOW_S:g} s)", ours.rest_cpu, "%",
            reference, ref_of(lambda o: o.rest_cpu), max_ratio=1.0 if big else None,
            note=f"% of one core, all {count} processes together ({ours.rest_cpu / count:.2f} % "
            f"each); heartbeats every {HEARTBEAT_S:g} s on up to {count * (count - 1) // 2:,} "
            "connections"),
        Row(NAME, f"{label}: RSS per member, median", median(ours.rss), "MiB", reference,
            ref_of(lambda o: median(o.rss)), max_value=40.0,
            note=f"VmRSS, min {min(ours.rss):.1f} MiB, max {max(ours.rss):.1f} MiB"),
        Row(NAME, f"{label}: disconnects of live peers, meshing and at rest",
            float(sum(ours.disconnects.values())), "", reference,
            ref_of(lambda o: float(sum(o.disconnects.values()))), max_value=0.0 if big else None,
            note=f"ours: {_churn(ours.disconnects)}"),
        Row(NAME, f"{label}: kill -9 -> every other member reports it gone", ours.killed, "s",
            reference, ref_of(lambda o: o.killed), max_value=KILL_TARGET_S,
            status=status(ours.killed, f"not all reported within {GONE_WAIT_S:g} s")),
        Row(NAME, f"{label}: SIGSTOP -> every other member reports it gone", ours.stopped, "s",
            reference, ref_of(lambda o: o.stopped), max_value=STOP_TARGET_S, max_ratio=0.5,
            status=status(ours.stopped, f"not all reported within {GONE_WAIT_S:g} s")),
    ]  # fmt: skip


def run() -> list[Row]:
    deadline = Deadline(590, NAME)
    try:
        serf.binary()
        reference: System | None = serf_system()
        why = ""
    except serf.SerfMissing as exc:
        reference, why = None, str(exc)
    rows: list[Row] = []
    for count in SIZES:
        ours = _measure(exo_system(), count, deadline)
        theirs = _measure(reference, count, deadline) if reference else None
        rows += _rows(ours, theirs, why)
    return rows
