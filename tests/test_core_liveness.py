"""The liveness state machine, driven by a clock of the test's own: no sleeps, no timing luck.

Each test plays the node's one timer (``tick``) and the frames that arrive (``heard`` /
``on_frame``) at chosen instants, and checks what the machine asks to send or drop.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from exo_discovery_core import PeerCandidate
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.liveness import (
    CALM_FOR,
    HEARTBEAT,
    PROBE,
    STOPPING,
    WATCH_ME,
    WAVE_SLACK,
    Actions,
    Liveness,
)
from exo_discovery_core.testing import next_event, run_node
from tests.support.nodes import NodeFleet
from tests.support.static import Static

INTERVAL = 0.5
DEAD_AFTER = 2.5
SPEAKS_EVERY = 0.25  # a live peer's frames, in these tests
SLACK = 0.02  # the timer wakes at the instant something is due, give or take its minimum wait


def _ids(count: int) -> list[PeerId]:
    return sorted(Identity.generate().peer_id for _ in range(count))


def _node(peers: list[PeerId], me: PeerId | None = None, *, watched: bool = True) -> Liveness:
    """A node connected to ``peers``, all of which (unless not ``watched``) heartbeat it."""
    me = me or Identity.generate().peer_id
    live = Liveness(me, interval=INTERVAL, dead_after=DEAD_AFTER)
    live.start(0.0)
    for peer in peers:
        live.add(peer, now=0.0)
        if watched:
            live.on_frame(peer, WATCH_ME, now=0.0)
    return live


class Clock:
    """Plays the node's timer, waking when the machine says (or late, to play a stalled loop),
    and the frames of the peers that speak; collects what the machine asks for."""

    def __init__(self, live: Liveness) -> None:
        self.live = live
        self.now = 0.0
        self.actions: list[tuple[float, Actions]] = []

    def run(self, until: float, *, heard: Sequence[PeerId] = ()) -> None:
        """On time until ``until``; the peers in ``heard`` send a frame every SPEAKS_EVERY."""
        speaks = self.now + SPEAKS_EVERY
        while min(self.live.next_due, speaks) <= until + 1e-9:
            if speaks <= self.live.next_due:
                self.now = speaks
                for peer in heard:
                    self.live.heard(peer, self.now)
                speaks += SPEAKS_EVERY
            else:
                self.now = self.live.next_due
                self.actions.append((self.now, self.live.tick(self.now)))
        self.now = until

    def stall(self, seconds: float) -> None:
        """The loop is blocked: the timer's next wake-up comes ``seconds`` late."""
        self.now = self.live.next_due + seconds
        self.actions.append((self.now, self.live.tick(self.now)))

    def dead(self) -> list[tuple[float, PeerId]]:
        return [(t, p) for t, a in self.actions for p, _ in a.dead]

    def told(self, to: PeerId) -> list[dict[str, object]]:
        """The suspicions the machine told ``to`` of."""
        return [f for _, a in self.actions for p, f in a.send if p == to and f["type"] == "suspect"]

    def sent(self, frame: dict[str, object], to: PeerId | None = None) -> list[float]:
        return [t for t, a in self.actions for p, f in a.send if f == frame and to in (None, p)]


def test_a_silent_peer_is_suspected_probed_then_dropped_after_dead_after() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(5.0, heard=[c])
    [(when, peer)] = clock.dead()
    assert peer == b
    assert DEAD_AFTER <= when <= DEAD_AFTER + SLACK
    probed = clock.sent(PROBE, to=b)
    assert probed and live.suspect_after <= probed[0] < when
    assert clock.told(c) == [{"type": "suspect", "peer": str(b)}], "the other peers hear of it once"


def test_a_suspicion_is_cleared_by_traffic() -> None:
    (b,) = _ids(1)
    live = _node([b])
    clock = Clock(live)
    clock.run(live.suspect_after + SLACK)
    assert list(live.suspected) == [b]
    live.heard(b, clock.now)  # the answer to the probe, or any other frame
    assert list(live.suspected) == []
    clock.run(clock.now + live.suspect_after - 0.1)
    clock.run(clock.now + 3.0, heard=[b])
    assert clock.dead() == []


def test_a_node_whose_loop_stalls_does_not_blame_its_peers() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(1.0, heard=[b, c])
    clock.stall(5.0)  # twice dead_after without a tick: the host blocked our loop
    assert clock.dead() == [] and list(live.suspected) == []
    # the frames that queued while we were stalled are read now: the peers were alive all along
    live.heard(b, clock.now)
    live.heard(c, clock.now)
    clock.run(clock.now + 3.0, heard=[b, c])
    assert clock.dead() == [] and clock.sent(PROBE) == []


def test_after_a_stall_a_really_silent_peer_is_still_dropped() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(1.0, heard=[b, c])
    clock.stall(5.0)
    clock.run(clock.now + 4.0, heard=[c])  # b never speaks again
    [(when, peer)] = clock.dead()
    assert peer == b
    # its silence counts from the resumption: the stalled seconds are not held against it
    assert when >= 1.0 + 5.0 + DEAD_AFTER - INTERVAL


def test_a_late_loop_raises_awareness_and_gives_probes_longer() -> None:
    (b,) = _ids(1)
    live = _node([b])
    clock = Clock(live)
    for _ in range(4):  # the loop keeps running late: each late wake-up after the first counts
        live.heard(b, clock.now)
        clock.stall(0.5)
    assert live.awareness == 3
    live.heard(b, clock.now)  # b's last word; our loop is on time from here
    start = clock.now
    clock.run(start + 10.0)
    [(when, _)] = clock.dead()
    # an on-time node would have dropped b after dead_after; a late one waits longer for the probe
    assert when - start >= live.suspect_after + 2 * live.confirm_within


def test_awareness_falls_back_once_the_loop_is_on_time() -> None:
    (b,) = _ids(1)
    live = _node([b])
    clock = Clock(live)
    clock.stall(0.5)
    clock.stall(0.5)
    assert live.awareness == 1
    clock.run(clock.now + 3.0, heard=[b])
    assert live.awareness == 0


def test_one_late_wake_up_is_a_stall_and_does_not_delay_the_verdict_on_a_frozen_peer() -> None:
    """A burst of the node's own work (every node's, when a member dies: the disconnect, the
    exchange's deltas, the redials) makes one wake-up late. Its seconds are given back, and no
    more: a peer that froze meanwhile is dropped dead_after after its last word, plus the stall."""
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(1.0, heard=[b, c])
    live.heard(b, clock.now)  # b's last word
    start = clock.now
    clock.stall(0.4)  # later than LATE_AFTER, once
    assert live.awareness == 0
    clock.run(start + 10.0, heard=[c])
    [(when, peer)] = clock.dead()
    assert peer == b and when - start <= DEAD_AFTER + 0.4 + SLACK
    assert clock.told(c) == [{"type": "suspect", "peer": str(b)}], "nor told to wait longer"


def test_late_wake_ups_far_apart_are_stalls_each_and_leave_awareness_at_zero() -> None:
    (b,) = _ids(1)
    live = _node([b])
    clock = Clock(live)
    for _ in range(4):
        clock.stall(0.4)
        assert live.awareness == 0
        clock.run(clock.now + 2.5, heard=[b])  # on time for longer than CALM_FOR in between
    assert clock.dead() == [] and live.suspicions == 0


def test_a_report_naming_us_does_not_slow_our_verdicts() -> None:
    """Only our own lateness stretches our probes; no honest peer says we are silent (a suspicion
    is told to everyone but the suspect), so a peer that does cannot slow what we find."""
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(0.5, heard=[b, c])
    for _ in range(10):
        assert not live.on_frame(c, {"type": "suspect", "peer": str(live.me), "a": 3}, clock.now)
    assert live.awareness == 0
    live.heard(b, clock.now)
    start = clock.now
    clock.run(start + 10.0, heard=[c])
    [(when, peer)] = clock.dead()
    assert peer == b and when - start <= DEAD_AFTER + SLACK


def test_a_probe_is_answered_at_once() -> None:
    (b,) = _ids(1)
    live = _node([b])
    live.heard(b, 0.1)
    assert live.on_frame(b, PROBE, now=0.1).send == [(b, HEARTBEAT)]


def test_a_report_makes_the_node_probe_and_only_its_own_probe_convinces_it() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(0.5, heard=[b, c])
    actions = live.on_frame(c, {"type": "suspect", "peer": str(b)}, now=clock.now)
    assert actions.send == [(b, PROBE)]
    live.heard(b, clock.now + 0.1)  # b answers: c was wrong (or lying)
    clock.run(clock.now + 3.0, heard=[b, c])
    assert clock.dead() == []


def test_a_reported_peer_that_does_not_answer_is_dropped() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(0.5, heard=[b, c])
    live.on_frame(c, {"type": "suspect", "peer": str(b)}, now=clock.now)
    reported = clock.now
    clock.run(clock.now + 2.0, heard=[c])
    [(when, peer)] = clock.dead()
    assert peer == b and when - reported <= live.confirm_within + SLACK


def test_reports_cannot_make_a_node_flood_or_drop_anyone() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(0.5, heard=[b, c])
    probes = 0
    for name in [str(b)] * 50 + ["", "x" * 1000, str(live.me), str(_ids(1)[0])]:
        probes += len(live.on_frame(c, {"type": "suspect", "peer": name}, now=clock.now).send)
    for junk in (None, 7, ["a"], {"a": 1}):
        assert not live.on_frame(c, {"type": "suspect", "peer": junk}, now=clock.now)
    assert probes == 1, "one probe for the whole burst"
    live.heard(b, clock.now)
    clock.run(clock.now + 2.0, heard=[b, c])
    assert clock.dead() == []


class Mesh:
    """Several nodes' machines on one clock of the test's, their frames delivered at once and in
    order (TCP); a frozen node neither ticks nor reads, and its peers keep what they decided."""

    def __init__(self, count: int) -> None:
        self.nodes = {pid: Liveness(pid, interval=INTERVAL, dead_after=DEAD_AFTER)
                      for pid in _ids(count)}  # fmt: skip
        self.ids = sorted(self.nodes)
        self.now = 0.0
        self.frozen: set[PeerId] = set()
        self.frames: list[tuple[float, PeerId, PeerId, dict[str, object]]] = []
        self.dead: list[tuple[float, PeerId, PeerId]] = []  # (when, who decided, whom)
        self.rang: list[tuple[float, PeerId]] = []  # (when, whose) timer rang
        for live in self.nodes.values():
            live.start(0.0)

    def connect(self, a: PeerId, b: PeerId) -> None:
        """Both ends admit the connection, then read what the other sent on it at once."""
        said = self.nodes[a].add(b, self.now), self.nodes[b].add(a, self.now)
        self._act(a, said[0])
        self._act(b, said[1])

    def kill(self, pid: PeerId) -> None:
        """``kill -9``: its connections close, and every peer sees that at once."""
        self.frozen.add(pid)
        for other in self.ids:
            if other != pid:
                self._act(other, self.nodes[other].remove(pid, self.now))

    def thaw(self, pid: PeerId) -> None:
        """A node frozen for a moment runs again: its timer rings at once, late; the frames sent
        to it meanwhile are lost to it (TCP would deliver them late: they are older than what
        the test looks at)."""
        self.frozen.discard(pid)
        self.rang.append((self.now, pid))
        self._act(pid, self.nodes[pid].tick(self.now))

    def full(self, ids: Sequence[PeerId] | None = None) -> None:
        ids = self.ids if ids is None else ids
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                self.connect(a, b)

    def run(self, until: float) -> None:
        while True:
            awake = [(live.next_due, pid) for pid, live in self.nodes.items()
                     if pid not in self.frozen]  # fmt: skip
            due, pid = min(awake)
            if due > until:
                break
            self.now = due
            self.rang.append((due, pid))
            self._act(pid, self.nodes[pid].tick(due))
        self.now = until

    def _act(self, sender: PeerId, actions: Actions) -> None:
        for whom, _ in actions.dead:
            self.dead.append((self.now, sender, whom))
            if whom not in self.frozen:  # the connection closes: it sees that (if it runs)
                self._act(whom, self.nodes[whom].remove(sender, self.now))
        for to, frame in actions.send:
            self.frames.append((self.now, sender, to, frame))
            self.nodes[sender].sent(to, self.now)
            receiver = self.nodes[to]
            if to in self.frozen or sender not in receiver._peers:
                continue
            receiver.heard(sender, self.now)
            self._act(to, receiver.on_frame(sender, frame, self.now))

    def beat_gaps(self, pid: PeerId, since: float) -> list[float]:
        """The times between ``pid``'s frames to its successor from ``since`` on (any frame
        is a heartbeat to the receiver)."""
        at = [t for t, a, b, _ in self.frames if a == pid and t >= since
              and b == self.nodes[pid].successor]  # fmt: skip
        return [later - earlier for earlier, later in itertools.pairwise(at)]

    def beats(self, since: float) -> list[tuple[PeerId, PeerId]]:
        return [(a, b) for t, a, b, f in self.frames if t >= since and f.get("type") == "hb"
                and f.get("w") != 0]  # fmt: skip

    def watched(self) -> set[PeerId]:
        """The nodes some live node watches."""
        return {p for pid, live in self.nodes.items() if pid not in self.frozen
                for p in live.senders}  # fmt: skip

    def suspicions(self) -> int:
        return sum(live.suspicions for live in self.nodes.values())


def test_in_a_settled_ring_each_node_heartbeats_its_successor_alone() -> None:
    mesh = Mesh(8)
    mesh.full()
    mesh.run(10.0)
    beats = mesh.beats(since=2.0)  # the handovers of the mesh's first moments are over
    ring = mesh.ids
    successor = {p: ring[(i + 1) % len(ring)] for i, p in enumerate(ring)}
    assert set(beats) == set(successor.items()), "one partner each, one way"
    per_node = len(beats) / len(ring) / 8.0
    assert per_node <= 1 / (0.75 * INTERVAL), "at most one heartbeat out per interval"
    for pid, live in mesh.nodes.items():
        assert live.successor == successor[pid]
        assert live.senders == {p for p, s in successor.items() if s == pid}
    assert mesh.watched() == set(ring) and mesh.dead == [] and mesh.suspicions() == 0
    assert [f for *_, f in mesh.frames if f.get("type") != "hb"] == [], "no probe, no report"


def test_in_a_settled_ring_the_heartbeats_travel_as_one_wave() -> None:
    """Each node sends its heartbeat as its predecessor's arrives, in the same wake-up: only the
    lowest node's timer rings for them, and no node's heartbeats are further apart than
    interval x (1 + WAVE_SLACK)."""
    mesh = Mesh(8)
    mesh.full()
    mesh.run(4.0)
    since = len(mesh.rang)
    mesh.run(12.0)
    assert {pid for _, pid in mesh.rang[since:]} == {mesh.ids[0]}, "one timer starts the wave"
    for pid in mesh.ids:
        gaps = mesh.beat_gaps(pid, since=4.0)
        assert len(gaps) >= 8.0 / INTERVAL - 2, "a heartbeat every interval, as before"
        assert max(gaps) <= INTERVAL + SLACK
    assert mesh.dead == [] and mesh.suspicions() == 0


def test_a_node_whose_wave_stops_heartbeats_on_its_own_in_time() -> None:
    """The sender below it freezes: no wave comes, and its own timer heartbeats its successor
    at most interval x (1 + WAVE_SLACK) after its last heartbeat, so no one suspects it."""
    mesh = Mesh(6)
    mesh.full()
    mesh.run(4.0)
    frozen, rider = mesh.ids[2], mesh.ids[3]
    mesh.frozen.add(frozen)
    mesh.run(14.0)
    assert max(mesh.beat_gaps(rider, since=3.0)) <= INTERVAL * (1 + WAVE_SLACK) + SLACK
    assert {whom for _, _, whom in mesh.dead} == {frozen}, "only the frozen node is dropped"
    assert mesh.nodes[rider].successor == mesh.ids[4]


def test_a_node_whose_timer_beat_a_late_wave_rides_the_next_one() -> None:
    """A node is held up (its loop blocked) as a wave passes: it misses the wave and its timer,
    running late, beats 0.4 interval after the wave, so the next wave comes 0.6 interval after
    its heartbeat. It rides that one (``RIDE_FROM``; at 0.75 its timer kept beating the waves
    for several intervals, and so did the nodes after it), and from then on only the lowest
    node's timer rings; nobody's heartbeats are further apart than interval x (1 + WAVE_SLACK)."""
    mesh = Mesh(8)
    mesh.full()
    mesh.run(4.0)
    wave = max(t for t, pid in mesh.rang if pid == mesh.ids[0])  # the last wave started then
    late = mesh.ids[2]
    mesh.frozen.add(late)  # the next wave passes it by
    mesh.run(wave + 1.4 * INTERVAL)
    mesh.thaw(late)  # its timer rings 0.4 interval after the wave it missed
    mesh.run(wave + 2.1 * INTERVAL)  # the next wave
    settled = len(mesh.rang)
    mesh.run(12.0)
    assert {pid for _, pid in mesh.rang[settled:]} == {mesh.ids[0]}, "one wave again"
    for pid in mesh.ids:
        if pid != late:
            assert max(mesh.beat_gaps(pid, since=3.0)) <= INTERVAL * (1 + WAVE_SLACK) + SLACK
    assert mesh.dead == [] and mesh.suspicions() == 0


def test_a_frame_of_the_exchange_just_before_the_wave_does_not_stop_it() -> None:
    """Any frame is a heartbeat to its receiver, but the wave looks at our last heartbeat: a
    node that sent its successor something else just before the wave came still rides it, so
    the nodes after it do not ring their own timers for it."""
    mesh = Mesh(8)
    mesh.full()
    mesh.run(4.0)
    wave = max(t for t, pid in mesh.rang if pid == mesh.ids[0])
    mesh.run(wave + 0.9 * INTERVAL)  # just before the next wave
    sender = mesh.nodes[mesh.ids[3]]
    assert sender.successor is not None
    sender.sent(sender.successor, mesh.now)  # say, a refresh of the relayed members
    mesh.nodes[sender.successor].heard(mesh.ids[3], mesh.now)
    since = len(mesh.rang)
    mesh.run(12.0)
    assert {pid for _, pid in mesh.rang[since:]} == {mesh.ids[0]}, "one wave still"
    assert mesh.dead == [] and mesh.suspicions() == 0


def test_a_peer_whose_successor_changes_tells_the_old_one_and_is_not_suspected() -> None:
    mesh = Mesh(6)
    a, b, c = mesh.ids[1], mesh.ids[2], mesh.ids[3]
    others = [p for p in mesh.ids if p != b]
    mesh.full(others)  # b is not there yet: a heartbeats c
    mesh.run(3.0)
    assert mesh.nodes[a].successor == c and a in mesh.nodes[c].senders
    joined = mesh.now
    for p in others:
        mesh.connect(b, p)  # b comes between them: a heartbeats b from now on
    mesh.run(12.0)
    to_c = [(t, f) for t, s, r, f in mesh.frames if s == a and r == c and t >= joined]
    stop_at = next(t for t, f in to_c if f == STOPPING)
    told_b = next(t for t, s, r, f in mesh.frames if s == a and r == b and f.get("w") == 1)
    assert told_b < stop_at, "make before break: b watches a before c stops"
    assert [f for t, f in to_c if t > stop_at] == [], "and then nothing more to c"
    assert a not in mesh.nodes[c].senders and a in mesh.nodes[b].senders
    assert mesh.dead == [] and mesh.suspicions() == 0, "nobody suspects a: it said it stops"
    assert [f for *_, f in mesh.frames if f.get("type") in ("probe", "suspect")] == []


@pytest.mark.parametrize("seed", range(5))
def test_disagreeing_views_leave_nobody_unwatched_and_nobody_suspected(seed: int) -> None:
    import random

    rng = random.Random(seed)
    mesh = Mesh(10)
    pairs = [(a, b) for i, a in enumerate(mesh.ids) for b in mesh.ids[i + 1 :]]
    rng.shuffle(pairs)
    kept = pairs[: len(pairs) // 2]  # a partial mesh, connected a pair at a time
    for k, (a, b) in enumerate(kept):
        mesh.run(0.1 * k)
        mesh.connect(a, b)
    connected = {p for pair in kept for p in pair}
    formed = mesh.now
    for t in (formed + 2 * INTERVAL + 0.01, formed + 5.0, formed + 15.0):
        mesh.run(t)
        assert mesh.watched() == connected, "everyone is heartbeated by someone, who watches"
    assert mesh.dead == [] and mesh.suspicions() == 0
    assert [f for *_, f in mesh.frames if f.get("type") == "suspect"] == []


@pytest.mark.parametrize("offset", [i * 0.05 for i in range(30)])
def test_a_frozen_node_is_found_by_all_whenever_it_froze(offset: float) -> None:
    """Frozen at any instant, even in a handover (its successor just changed): every peer drops
    it within the bounds, and no one else."""
    mesh = Mesh(6)
    a, b = mesh.ids[1], mesh.ids[2]
    others = [p for p in mesh.ids if p != b]
    mesh.full(others)
    mesh.run(3.0)
    for p in others:
        mesh.connect(b, p)
    mesh.run(3.0 + offset)
    mesh.frozen.add(a)
    frozen = mesh.now
    mesh.run(frozen + 15.0)
    found = {who: t for t, who, whom in mesh.dead if whom == a}
    assert set(found) == set(mesh.ids) - {a}, "every peer drops it"
    assert all(whom == a for _, _, whom in mesh.dead), "and no one else"
    first = min(found.values())
    assert first - frozen <= DEAD_AFTER + INTERVAL + SLACK
    assert max(found.values()) - first <= mesh.nodes[b].confirm_within + SLACK


@pytest.mark.parametrize("after", [0.01, 0.05, 0.2, 0.45])
def test_a_node_frozen_just_after_its_successor_died_is_found_within_dead_after(
    after: float,
) -> None:
    """Its successor is killed (every connection to it closes), and a moment later the node
    freezes: it told its new successor "I heartbeat you" when it lost the old one, so that one
    suspects it as a watched peer and tells the others, and every peer drops it within
    dead_after of the freeze (not the new successor's quiet probe first and everyone else's
    after)."""
    mesh = Mesh(6)
    mesh.full()
    mesh.run(3.0)
    x, killed = mesh.ids[2], mesh.ids[3]
    mesh.kill(killed)
    mesh.run(mesh.now + after)
    mesh.frozen.add(x)
    frozen = mesh.now
    mesh.run(frozen + 15.0)
    found = {who: t for t, who, whom in mesh.dead if whom == x}
    assert set(found) == set(mesh.ids) - {x, killed}, "every live peer drops it"
    assert all(whom == x for _, _, whom in mesh.dead), "and no one else"
    assert max(found.values()) - frozen <= DEAD_AFTER + SLACK


def test_a_node_frozen_before_its_first_heartbeat_is_found() -> None:
    mesh = Mesh(6)
    f = mesh.ids[2]
    others = [p for p in mesh.ids if p != f]
    mesh.full(others)
    mesh.run(3.0)
    mesh.frozen.add(f)  # it connects, and says nothing ever
    for p in others:
        mesh.connect(f, p)
    mesh.run(30.0)
    assert {who for _, who, whom in mesh.dead if whom == f} == set(others)
    assert all(whom == f for _, _, whom in mesh.dead)


def test_no_heartbeat_on_a_connection_that_carried_traffic() -> None:
    (b,) = _ids(1)
    live = _node([])
    assert live.add(b, now=0.0).send == [(b, WATCH_ME)], "our new successor is told at once"
    live.on_frame(b, WATCH_ME, now=0.0)
    clock = Clock(live)
    for _ in range(24):
        live.sent(b, clock.now)  # other frames go to b, and come from it, all the time
        live.heard(b, clock.now)
        clock.run(clock.now + 0.125)
    to_b = [f for _, a in clock.actions for p, f in a.send if p == b]
    assert to_b == [], "b heard once that we heartbeat it, then traffic does"


# -- a real node whose loop is blocked -----------------------------------------------------------


@pytest.mark.anyio
async def test_a_node_whose_loop_is_blocked_reports_no_live_peer_gone(
    nodes: NodeFleet, tmp_path: Path
) -> None:
    config = tmp_path / "patient.toml"
    config.write_text("[node]\ndead_after = 30.0\n")  # the peer waits for us however long we stall
    peer = nodes.start("peer", "--config", str(config), "--plugins", "",
                       "--listen-host", "127.0.0.1", "--port", "0")  # fmt: skip
    plugin = Static(PeerCandidate.at("127.0.0.1", peer.port, peer.peer_id))
    async with run_node({"static": plugin}) as node, node.events() as events:
        await next_event(events, "connected", timeout=10, peer_id=peer.peer_id)
        assert node.connections is not None
        live = node.connections.liveness
        time.sleep(2 * DEAD_AFTER)  # noqa: ASYNC251 - a blocking call holds the node's loop
        resumed = time.monotonic()
        # our timer runs on for longer than dead_after after the stall (a deadline, not a sleep)
        with anyio.fail_after(4 * DEAD_AFTER):
            while (live.last_tick or 0.0) < resumed + DEAD_AFTER + INTERVAL:  # noqa: ASYNC110
                await anyio.sleep(INTERVAL / 2)
        assert peer.peer_id in node.connections.connected()
        assert live.suspicions == 0, "the stalled seconds were held against the peer"
        with anyio.move_on_after(0):
            async for event in events:
                assert event.event != "disconnected", event


@pytest.mark.anyio
async def test_dropping_a_peer_whose_writer_already_ended_leaves_the_node_running() -> None:
    """What the timer does to a dead peer (close it) is safe when that peer's socket had
    already failed under its writer: the node reports it gone, and serves on."""
    async with run_node() as a, a.events() as events:
        plugin = Static(PeerCandidate.at("127.0.0.1", a.port, a.peer_id))
        async with run_node({"static": plugin}) as b:
            await next_event(events, "connected", timeout=10, peer_id=b.peer_id)
            conn = a.connections._current[b.peer_id]
            conn.outbox.close()  # its writer ends, as when a send fails
            with anyio.fail_after(5):
                await conn.outbox.wait_finished()
            await a.connections._close(conn, "test: dropped")  # raises nothing
            await next_event(events, "disconnected", timeout=5, peer_id=b.peer_id)
            await next_event(events, "connected", timeout=10, peer_id=b.peer_id)  # b redials


def test_a_peer_that_says_it_runs_late_gets_longer_to_answer_a_probe() -> None:
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    clock.run(0.5, heard=[b, c])
    live.on_frame(b, {"type": "hb", "a": 2}, now=clock.now)  # b: "my loop runs late"
    start = clock.now
    clock.run(start + 10.0, heard=[c])
    [(when, peer)] = clock.dead()
    assert peer == b and when - start >= live.suspect_after + 3 * live.confirm_within - SLACK
    assert clock.told(c) == [{"type": "suspect", "peer": str(b), "a": 2}], "the others wait as long"


def test_a_peer_s_word_that_it_runs_late_ages_and_a_stale_one_gives_it_no_longer() -> None:
    """b said it ran late once, long ago (busy meshing), then spoke without a score in frames
    that are not heartbeats (it heartbeats someone else): when it freezes, its probe gets no
    extra time, and the others are told none (the word aged as b's own score would)."""
    b, c = _ids(2)
    live = _node([b, c])
    clock = Clock(live)
    live.on_frame(b, {"type": "hb", "a": 3}, now=clock.now)
    clock.run(3 * CALM_FOR + 1.0, heard=[b, c])  # each CALM_FOR ages its word by one level
    start = clock.now
    clock.run(start + 10.0, heard=[c])
    [(when, peer)] = clock.dead()
    assert peer == b and when - start <= DEAD_AFTER + SLACK
    assert clock.told(c) == [{"type": "suspect", "peer": str(b)}]


def test_a_report_of_a_late_peer_gives_it_as_long_and_bad_scores_count_as_zero() -> None:
    b, c = _ids(2)
    for said, factor in [(3, 4), (99, 1), (-1, 1), (True, 1), ("3", 1), (2.5, 1), (None, 1)]:
        live = _node([b, c])
        clock = Clock(live)
        clock.run(0.5, heard=[b, c])
        live.on_frame(c, {"type": "suspect", "peer": str(b), "a": said}, now=clock.now)
        reported = clock.now
        clock.run(reported + 6.0, heard=[c])
        [(when, _)] = clock.dead()
        assert abs(when - reported - factor * live.confirm_within) <= SLACK, said


def test_a_late_node_says_so_in_its_heartbeats() -> None:
    (b,) = _ids(1)
    live = _node([b])
    clock = Clock(live)
    clock.stall(0.5)
    clock.stall(0.5)  # late again: from this wake-up on the score is 1
    late = clock.now
    live.heard(b, clock.now)
    clock.run(clock.now + 1.0, heard=[b])
    beats = [f for t, a in clock.actions if t >= late for p, f in a.send if f.get("type") == "hb"]
    assert beats and all(f.get("a") == 1 for f in beats)
    assert live.on_frame(b, PROBE, now=clock.now).send == [(b, {"type": "hb", "a": 1})]


# -- nothing due, no wake-up ---------------------------------------------------------------------


def test_a_node_with_no_one_to_watch_has_nothing_due_until_a_peer_comes() -> None:
    woken: list[float] = []
    live = Liveness(_ids(1)[0], interval=INTERVAL, dead_after=DEAD_AFTER,
                    wake=lambda: woken.append(live.next_due))  # fmt: skip
    live.start(0.0)
    live.tick(INTERVAL)
    assert live.next_due == math.inf, "no peer: the timer sleeps until woken"
    (b,) = _ids(1)
    live.add(b, now=7.0)
    assert woken == [7.0 + INTERVAL], "the new partner is heartbeated within an interval"
    live.remove(b)
    assert live.tick(live.next_due).send == [] and live.next_due == math.inf


def test_a_report_wakes_a_sleeping_timer_for_the_probes_wait() -> None:
    b, c = _ids(2)
    woken: list[float] = []
    live = Liveness(_ids(1)[0], interval=5.0, dead_after=20.0,
                    wake=lambda: woken.append(live.next_due))  # fmt: skip
    live.start(0.0)
    live.add(b, now=0.0)
    live.add(c, now=0.0)
    live.tick(5.0)  # the timer sleeps until the next batch, at 10 s
    live.on_frame(c, {"type": "suspect", "peer": str(b)}, now=6.0)
    assert woken == [6.0 + live.confirm_within], "woken for the probe's wait, not at 10 s"
    assert [p for p, _ in live.tick(live.next_due).dead] == [b]


def test_a_tick_in_a_large_cluster_looks_at_its_partners_and_suspects_only() -> None:
    peers = _ids(200)
    live = _node(peers)
    looked: set[PeerId] = set()
    states = live._peers

    class Watched(dict):  # type: ignore[type-arg]
        def __getitem__(self, peer: PeerId) -> object:
            looked.add(peer)
            return states[peer]

    live._peers = Watched(states)
    live.tick(INTERVAL)
    assert looked == set(live.partners())
    assert len(live.partners()) <= len(peers) and looked == {live.successor, *live.senders}


def test_with_probe_silent_after_an_unwatched_silent_connection_is_probed_then_dropped() -> None:
    """max_connections: a connection neither side heartbeats (its watcher is not among our
    connections, so no report comes) is probed quietly once silent ``probe_silent_after``;
    an answer clears it, silence drops it and tells the others; talking peers are never probed."""
    me, *others = _ids(4)
    live = Liveness(me, interval=INTERVAL, dead_after=DEAD_AFTER, probe_silent_after=10.0)
    live.start(0.0)
    for peer in others:
        live.add(peer, now=0.0)
    talking = [p for p in others if p != live.successor][:1]
    silent = next(p for p in others if p != live.successor and p not in talking)
    live.on_frame(talking[0], WATCH_ME, now=0.0)  # it heartbeats us: watched, as a ring has it
    clock = Clock(live)
    clock.run(9.9, heard=[live.successor, *talking])
    assert clock.sent(PROBE) == [] and clock.dead() == []
    clock.run(10.0 + SLACK, heard=[live.successor, *talking])
    assert clock.sent(PROBE, to=silent) == [pytest.approx(10.0, abs=SLACK)]
    live.heard(silent, clock.now)  # it answers: alive, and silent again from now on
    clock.run(19.9, heard=[live.successor, *talking])
    assert clock.dead() == [] and len(clock.sent(PROBE, to=silent)) == 1
    clock.run(40.0, heard=[live.successor, *talking])
    [(when, peer)] = clock.dead()
    assert peer == silent and when == pytest.approx(10.0 + 10.0 + live.confirm_within, abs=0.1)
    assert clock.sent(PROBE, to=talking[0]) == []
    told = [p for _, a in clock.actions for p, f in a.send if f.get("type") == "suspect"]
    assert set(told) == {live.successor, *talking}, "the others hear of it once it is dead"


def test_without_probe_silent_after_an_unwatched_silent_connection_is_left_alone() -> None:
    me, *others = _ids(4)
    live = Liveness(me, interval=INTERVAL, dead_after=DEAD_AFTER)
    live.start(0.0)
    for peer in others:
        live.add(peer, now=0.0)
    unwatched = [p for p in others if p != live.successor]
    live.on_frame(unwatched[0], WATCH_ME, now=0.0)  # one heartbeats us: the other is unwatched
    clock = Clock(live)
    clock.run(60.0, heard=[live.successor, unwatched[0]])
    assert clock.sent(PROBE, to=unwatched[1]) == [] and clock.dead() == []
