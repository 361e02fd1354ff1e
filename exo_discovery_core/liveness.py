"""Liveness: is each connected peer still running? One timer per node, not one per connection.

A crashed peer closes its sockets, and the kernel says so at once; this module is for the peer
that is still there but silent (frozen, ``SIGSTOP``, a wedged loop). memberlist's SWIM and
Lifeguard are the model, over the connections we already hold:

- **One watcher each, one frame per heartbeat.** Connected peers sit on a ring ordered by peer
  id; each node heartbeats only its successor in its own view (``w: 1``, "I heartbeat you"), and
  the receiver watches whoever's latest heartbeat said so. Views that disagree (a mesh still
  forming) still leave every node watched: each one heartbeats someone, and that someone watches
  it. A node whose successor changes hands over before it breaks: it announces itself to the new
  one at once, goes on heartbeating the old one for an ``interval``, then tells it it stops
  (``w: 0``; TCP is ordered, so nothing of ours is still on the way), and the old one stops
  watching it instead of suspecting it. A node that nobody heartbeats watches its own ring
  predecessor: silent for ``suspect_after``, it is probed (quietly: it may heartbeat a peer we
  do not know), so a peer that froze before its first word to anyone is found too.
  A frame of any kind counts as a heartbeat: a connection that carried traffic recently is not
  pinged. Per node that is about one frame out and one in per ``interval``, whatever the
  cluster's size.
- **One wake-up per heartbeat, not two.** A node's heartbeat goes out when its sender below it
  on the ring (a lower peer id) heartbeats it: the heartbeats travel round the ring as one wave
  that the lowest node's timer starts every ``interval``, and each node hears its predecessor's
  and sends its own in the same wake-up (at rest a node's CPU is its wake-ups, not its frames).
  Its own timer is the fallback: it heartbeats on its own ``interval`` times
  ``1 + WAVE_SLACK`` after its last heartbeat if no wave came (its sender froze, or views
  disagree), so the gap between two of its heartbeats stays far within ``suspect_after``.
  A heartbeat half an interval old (``RIDE_FROM``) rides the wave: a node whose timer beat a
  late wave joins the next one, and so does every node after it (at 0.75 the next wave came
  just as early as that and the nodes after a late hop kept beating on their own, one timer
  wake-up each per interval: 0.8 a second per node on a ring of 100, simulated, 0.3 now).
  With ``max_connections`` the ring is in the graph too: a node keeps its ring neighbours
  among all members first (:mod:`.degree`), so each node is heartbeated from below.
- **Suspicion, then confirmation.** A watched peer silent for ``suspect_after`` is only suspected:
  it gets a direct ``probe`` (which any live peer answers at once) and the node tells its other
  peers, which probe it too. Only a probe unanswered for ``confirm_within`` makes it ``dead``;
  any frame from the peer clears the suspicion. A report is never believed: each node is
  convinced by its own probe alone, so no peer can talk a node into dropping another.
- **Slow self, slow verdict** (Lifeguard). The timer measures how late it runs. Time the node's
  own loop spent stalled does not count as anyone's silence, and while the node keeps running late
  its awareness score stretches the time a probe has to be answered. Only the node's own
  evidence counts, and only a loop that keeps running late: a second late wake-up within
  ``CALM_FOR`` of the one before raises the score. One late wake-up is a stall (a burst of the
  node's own work, as every node does when a member dies), and the stall's seconds are given back
  exactly already; stretching the probes for it would only delay the verdict on a real failure
  that follows. A report naming the node itself changes nothing (no honest peer sends one: a
  suspicion is told to everyone but the suspect). A late node also says so in
  its heartbeats (``a``, its score), and a peer's probes get as long as that peer's own score
  asks for: a node busy meshing is given time, a frozen one (which said nothing) is not. Its
  word ages as its score does (one level per ``CALM_FOR``), so a score said while the mesh
  formed does not slow the verdict on a node that freezes a minute later.
- **Nothing due, no wake-up.** A tick looks only at the partners and the suspects, never at every
  connection, and the timer sleeps until the next thing due: a batch of heartbeats, a silence or a
  probe's wait running out. With no partner and no suspect nothing is due (``next_due`` is
  infinite) until a peer is added or reported, which calls ``wake``.

The state machine takes the time as an argument and returns what to send, so the tests drive it
with a clock of their own; :class:`ConnectionManager` runs the timer and does the sending.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .identity import PeerId

MAX_AWARENESS = 3  # a late node gives probes up to (1 + 3) x confirm_within
LATE_AFTER = 0.25  # seconds; a wake-up this late, the second within CALM_FOR, raises the score
CALM_FOR = 2.0  # seconds of on-time wake-ups that lower it by one
DUE_FROM = 0.75  # of an interval: a heartbeat this old goes out at the next tick
# of an interval: a heartbeat this old goes out with the wave. Lower than DUE_FROM: a node whose
# own timer beat a late wave (by WAVE_SLACK) hears the next one about DUE_FROM - WAVE_SLACK
# intervals later, and so rides it instead of beating it again (at DUE_FROM it did so by
# chance, and so did every node after it on the ring, wave after wave)
RIDE_FROM = 0.5
# of an interval: how much longer than one a node heartbeated from below waits for that wave
# before it heartbeats on its own (the wave's jitter, hop by hop, stays well within it)
WAVE_SLACK = 0.25

HEARTBEAT: dict[str, Any] = {"type": "hb"}
WATCH_ME: dict[str, Any] = {"type": "hb", "w": 1}  # "I heartbeat you": the receiver watches us
STOPPING: dict[str, Any] = {"type": "hb", "w": 0}  # "I stop heartbeating you": it stops watching
PROBE: dict[str, Any] = {"type": "probe"}
SUSPECT = "suspect"
FRAME_TYPES = frozenset({"hb", "probe", SUSPECT})


def suspect_frame(peer: PeerId, awareness: int = 0) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": SUSPECT, "peer": str(peer)}
    if awareness:
        frame["a"] = awareness  # how late the suspect said it runs: the others wait as long
    return frame


def _score(value: object) -> int:
    """A peer's word on its awareness score, bounded (anything else counts as 0)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_AWARENESS:
        return value
    return 0


@dataclass
class Actions:
    """What the state machine asks for: frames to send (peer, frame) and peers to drop."""

    send: list[tuple[PeerId, dict[str, Any]]] = field(default_factory=list)
    dead: list[tuple[PeerId, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.send or self.dead)


@dataclass
class _Peer:
    heard_at: float
    heard_stall: float  # the node's stall total when we last heard from the peer
    sent_at: float = float("-inf")  # our last frame to it, of any kind: a heartbeat to it
    beat_at: float = float("-inf")  # our last heartbeat to it: what the wave looks at
    announced: bool = False  # told "I heartbeat you" since it became our successor
    suspected_at: float | None = None
    suspected_stall: float = 0.0
    reported_at: float = float("-inf")  # last time another peer's report made us probe it
    why: str = ""
    told: bool = False  # the other peers heard of this suspicion
    awareness: int = 0  # how late it said it runs (its own score, 0..MAX_AWARENESS)
    awareness_at: float = float("-inf")  # when it (or a report of it) said so
    given: int = 0  # its word, aged, when this suspicion began: the probe's extra periods


class Liveness:
    """Heartbeats, suspicion and confirmation for every connected peer of one node."""

    def __init__(
        self,
        me: PeerId,
        *,
        interval: float,
        dead_after: float,
        wake: Callable[[], None] | None = None,
        probe_silent_after: float | None = None,
    ) -> None:
        self.me = me
        # with max_connections, a backstop for a failure report (exchange) that did not reach
        # us: every connection silent this long is probed quietly (a live one answers)
        self.probe_silent_after = probe_silent_after
        # called when the timer is to ring at another time: something falls due sooner than it
        # sleeps, or (a wave of heartbeats went by) later
        self._wake = wake
        self.interval = interval
        self.dead_after = dead_after
        self.confirm_within = min(1.0, 0.4 * dead_after)
        self.suspect_after = dead_after - self.confirm_within
        self.awareness = 0
        self.stalled = 0.0  # seconds the timer ran late, in total
        self.suspicions = 0  # raised on silence or report so far (status, tests)
        self._peers: dict[PeerId, _Peer] = {}
        self._successor: PeerId | None = None  # the one peer we heartbeat
        self._handover: dict[PeerId, float] = {}  # old successors, heartbeated until then
        self._senders: set[PeerId] = set()  # they heartbeat us: watched
        self._alone: tuple[float, float] | None = None  # (since, stall then): no sender
        self._suspects: set[PeerId] = set()
        self._due: float | None = None  # when the timer should run next
        self._last_tick: float | None = None
        self._calm_since = 0.0
        self._late_at = -math.inf  # when the timer last woke late

    # -- what the connections tell us ---------------------------------------------------------

    def add(self, peer: PeerId, now: float | None = None) -> Actions:
        """A new connection; what to send at once (our "I heartbeat you", if ``peer`` is our
        new successor)."""
        now = _now(now)
        self._peers[peer] = _Peer(heard_at=now, heard_stall=self.stalled)
        self._suspects.discard(peer)  # a new connection to it: what we suspected is over
        if not self._senders and self._alone is None:
            self._alone = (now, self.stalled)
        actions = Actions()
        self._new_successor(now, actions)
        return actions

    def remove(self, peer: PeerId, now: float | None = None) -> Actions:
        """A connection ended; what to send at once (to the new successor, if ``peer`` was ours:
        a node that freezes right after its successor died is watched all the same)."""
        actions = Actions()
        if self._peers.pop(peer, None) is not None:
            self._handover.pop(peer, None)
            self._suspects.discard(peer)
            self._lost_sender(peer, _now(now))
            self._new_successor(_now(now), actions)
        return actions

    def heard(self, peer: PeerId, now: float | None = None) -> None:
        """Any frame from ``peer``: it is alive, and a suspicion of it is over."""
        state = self._peers.get(peer)
        if state is not None:
            state.heard_at, state.heard_stall = _now(now), self.stalled
            if state.suspected_at is not None:
                state.suspected_at = None
                self._suspects.discard(peer)

    def sent(self, peer: PeerId, now: float | None = None) -> None:
        """Any frame to ``peer``: a heartbeat to it can wait."""
        state = self._peers.get(peer)
        if state is not None:
            state.sent_at = _now(now)

    def on_frame(self, peer: PeerId, message: dict[str, Any], now: float | None = None) -> Actions:
        """A liveness frame from ``peer`` (``heard`` was called for it already)."""
        now = _now(now)
        actions = Actions()
        kind = message.get("type")
        state = self._peers.get(peer)
        if state is None:
            return actions
        if kind == "hb":
            state.awareness, state.awareness_at = _score(message.get("a")), now
            if message.get("w") == 1 and peer not in self._senders:
                self._senders.add(peer)  # watched from now on: its silence is suspicious
                self._alone = None
                self._due_by(now + self.suspect_after)
            elif message.get("w") == 0:
                self._lost_sender(peer, now)  # it heartbeats someone else now: not a silence
            self._ride(peer, now, actions)
        elif kind == "probe":
            actions.send.append((peer, self._beat(HEARTBEAT)))
        elif kind == SUSPECT:
            self._reported(peer, message.get("peer"), message.get("a"), now, actions)
        return actions

    def _ride(self, peer: PeerId, now: float, actions: Actions) -> None:
        """A heartbeat from a sender below us on the ring is the wave: we tick now, so ours
        goes out with it (if it is ``RIDE_FROM`` old) and the timer waits for the next wave."""
        if peer not in self._senders or peer > self.me or self._successor is None:
            return
        state = self._peers[self._successor]
        # our last heartbeat, not our last frame: a frame of the exchange to the successor
        # (every 30 s, at any moment) stopped the wave there, and each node after it rang its
        # own timer for it
        if state.announced and now - state.beat_at >= RIDE_FROM * self.interval:
            due = self._due
            self._heartbeat(self._successor, state, now, actions)
            ticked = self.tick(now)
            actions.send += ticked.send
            actions.dead += ticked.dead
            if self._due != due and self._wake is not None:
                self._wake()  # the timer rings later (or sooner) now

    def _lost_sender(self, peer: PeerId, now: float) -> None:
        if peer in self._senders:
            self._senders.discard(peer)
            if not self._senders:
                self._alone = (now, self.stalled)
                self._due_by(now + self.suspect_after)

    def _new_successor(self, now: float, actions: Actions) -> None:
        """The ring changed: a new successor is announced to at once (not at the next batch,
        which a node frozen meanwhile never sends), the old one handed over."""
        successor = self._ring_successor()
        if successor == self._successor:
            return
        old, self._successor = self._successor, successor
        if old is not None and old in self._peers:
            self._handover[old] = math.inf  # until an interval after the announcement
        if successor is not None:
            self._handover.pop(successor, None)
            state = self._peers[successor]
            state.announced = False
            self._heartbeat(successor, state, now, actions)

    def _reported(
        self, reporter: PeerId, named: object, message_a: object, now: float, actions: Actions
    ) -> None:
        """Another peer finds ``named`` silent: probe it ourselves (at most once a while)."""
        if named == self.me:  # hearsay, not our own evidence: it may not slow our verdicts
            return
        state = self._peers.get(PeerId(named)) if isinstance(named, str) else None
        if state is None or state.suspected_at is not None:
            return
        state.awareness = max(self._their_awareness(state, now), _score(message_a))
        state.awareness_at = now
        if now - state.reported_at < self.dead_after:
            return  # one probe per report window, however often it is said
        state.reported_at = now
        self.suspicions += 1
        self._suspect(PeerId(named), state, now, f"reported silent by {reporter}", actions)
        state.told = True  # the reporter told the others already
        self._due_by(now + self._confirm(state))  # the probe's wait may end before the next tick

    # -- the one timer ------------------------------------------------------------------------

    def start(self, now: float | None = None) -> None:
        """The timer starts: from now on, every tick knows how late it runs."""
        now = _now(now)
        self._due, self._last_tick, self._calm_since = now + self.interval, now, now

    @property
    def next_due(self) -> float:
        """When the timer should run next (the driver sleeps until then, or until woken);
        infinite while nothing is due."""
        assert self._due is not None, "start() first"
        return self._due

    def _due_by(self, when: float) -> None:
        """Something falls due at ``when``: the timer must run by then (woken if asleep)."""
        if self._due is not None and when < self._due:
            self._due = when
            if self._wake is not None:
                self._wake()

    @property
    def last_tick(self) -> float | None:
        return self._last_tick

    def tick(self, now: float | None = None) -> Actions:
        """Heartbeats due, suspicions to raise, suspicions confirmed: one pass over the peers.

        Heartbeats go out in one batch per ``interval``; the timer wakes in between only when a
        peer's silence, a probe's wait or a handover runs out."""
        now = _now(now)
        self._measure_lateness(now)
        actions = Actions()
        self._beats(now, actions)
        watched = self._watched()
        for peer in self._looked_at():
            state = self._peers[peer]
            if state.suspected_at is None:
                quiet = self._since(*self._quiet_since(peer, state), now)
                if peer in watched and quiet >= self.suspect_after:
                    if peer in self._senders:
                        why = f"no heartbeat for {self.suspect_after:g} s"
                        self._suspect(peer, state, now, why, actions)
                        self.suspicions += 1
                        self._tell(peer, state, actions)
                    else:  # probed quietly: it may well heartbeat someone else
                        why = f"no heartbeat from anyone for {self.suspect_after:g} s"
                        self._suspect(peer, state, now, why, actions)
                elif peer not in watched and self._silent_too_long(state, now):
                    why = f"silent for {self.probe_silent_after:g} s"
                    self._suspect(peer, state, now, why, actions)  # quietly too
                continue
            wait = self._confirm(state)
            if self._since(state.suspected_at, state.suspected_stall, now) >= wait:
                why = f"{state.why}, then no answer to a probe for {wait:g} s"
                actions.dead.append((peer, why))
                self._tell(peer, state, actions)  # the others probe it too (found alone, say)
        for peer, _ in actions.dead:
            actions.send += self.remove(peer, now).send
        self._due = self._next(now)
        return actions

    def _beats(self, now: float, actions: Actions) -> None:
        """Our heartbeat to the successor (and to old ones being handed over), and the "I stop"
        to an old one an interval after the new one was told."""
        for old, until in list(self._handover.items()):
            if until <= now:
                del self._handover[old]
                actions.send.append((old, STOPPING))
                self._peers[old].sent_at = now
        for peer in [*self._handover, *([self._successor] if self._successor else [])]:
            state = self._peers[peer]
            if not state.announced or now - state.sent_at >= DUE_FROM * self.interval:
                self._heartbeat(peer, state, now, actions)

    def _heartbeat(self, peer: PeerId, state: _Peer, now: float, actions: Actions) -> None:
        """Say "I heartbeat you" to ``peer``; the first time to a new successor starts the old ones'
        last interval (make before break)."""
        actions.send.append((peer, self._beat(WATCH_ME)))
        state.sent_at = state.beat_at = now
        if peer == self._successor and not state.announced:
            state.announced = True
            for old, until in self._handover.items():
                self._handover[old] = min(until, now + self.interval)
            self._due_by(now + self.interval)  # the next batch, and the handovers' end

    def _watched(self) -> set[PeerId]:
        """The peers whose silence we look at: those that heartbeat us or, while nobody does,
        our own ring predecessor (which should; one that froze before its first word to us is
        found that way)."""
        if self._senders or self._alone is None:
            return self._senders
        predecessor = self._ring_predecessor()
        return {predecessor} if predecessor is not None else set()

    def _looked_at(self) -> set[PeerId]:
        """The peers a tick looks at: the watched and the suspects, and with
        ``probe_silent_after`` every connection (at most ``max_connections`` of them)."""
        if self.probe_silent_after is not None:
            return set(self._peers)
        return self._watched() | self._suspects

    def _silent_too_long(self, state: _Peer, now: float) -> bool:
        return (
            self.probe_silent_after is not None
            and self._silence(state, now) >= self.probe_silent_after
        )

    def _quiet_since(self, peer: PeerId, state: _Peer) -> tuple[float, float]:
        """Since when (and the stall total then) we count ``peer`` silent: from its last frame,
        or for the predecessor we watch alone from when nobody heartbeated us, if later."""
        then = (state.heard_at, state.heard_stall)
        if peer not in self._senders and self._alone is not None:
            then = max(then, self._alone)
        return then

    def _next(self, now: float) -> float:
        """The next heartbeat batch, or sooner a silence, a probe's wait or a handover running
        out; infinite with no peer and no suspect."""
        due = math.inf
        if self._successor is not None:  # a beat's wait from the last frame to it, of any kind
            due = self._peers[self._successor].sent_at + self._beat_wait()
        due = min(due, *self._handover.values()) if self._handover else due
        watched = self._watched()
        for peer in self._looked_at():
            state = self._peers[peer]
            if state.suspected_at is not None:
                then, stall, wait = state.suspected_at, state.suspected_stall, self._confirm(state)
            elif peer not in watched:
                assert self.probe_silent_after is not None  # else only the watched are looked at
                then, stall, wait = state.heard_at, state.heard_stall, self.probe_silent_after
            else:
                (then, stall), wait = self._quiet_since(peer, state), self.suspect_after
            due = min(due, then + wait + (self.stalled - stall))
        return max(due, now + 0.01)

    def _beat_wait(self) -> float:
        """How long after a batch of heartbeats the next one is due: an interval, or for a
        node heartbeated from below (which beats when that wave comes) a little longer."""
        if any(sender < self.me for sender in self._senders):
            return self.interval * (1 + WAVE_SLACK)
        return self.interval

    def _measure_lateness(self, now: float) -> None:
        late = 0.0 if self._due is None else max(0.0, now - self._due)
        self.stalled += late
        if late > LATE_AFTER:
            if now - self._late_at < CALM_FOR:  # late again: the loop keeps running late
                self.awareness = min(MAX_AWARENESS, self.awareness + 1)
            self._late_at = self._calm_since = now
        elif now - self._calm_since >= CALM_FOR and self.awareness > 0:
            self.awareness -= 1
            self._calm_since = now
        self._last_tick = now

    def _suspect(self, peer: PeerId, state: _Peer, now: float, why: str, actions: Actions) -> None:
        """Probe ``peer``: any frame from it clears this, no answer in time makes it dead."""
        state.suspected_at, state.suspected_stall, state.why = now, self.stalled, why
        state.given = self._their_awareness(state, now)  # no word of its can change it now
        state.told = False
        self._suspects.add(peer)
        actions.send.append((peer, PROBE))
        state.sent_at = now

    def _tell(self, peer: PeerId, state: _Peer, actions: Actions) -> None:
        """Our other peers hear of a suspicion once (each probes ``peer`` itself)."""
        if not state.told:
            state.told = True
            told = suspect_frame(peer, state.given)
            actions.send += [(other, told) for other in self._peers if other != peer]

    def _confirm(self, state: _Peer) -> float:
        """How long a probe of that peer may take: longer while we, or it, run late."""
        return self.confirm_within * (1 + max(self.awareness, state.given))

    def _their_awareness(self, state: _Peer, now: float) -> int:
        """A peer's word on how late it runs, aged as its own score ages (one level less per
        ``CALM_FOR``): a live peer still late says so again, in its heartbeats to its watcher and
        so in the watcher's report, while a word from long ago (the mesh's first seconds) is
        no reason to wait for a peer that froze since."""
        if not state.awareness:
            return 0
        return max(0, state.awareness - int((now - state.awareness_at) / CALM_FOR))

    def _beat(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A heartbeat, saying how late we run when we do (so our probes get that long)."""
        return {**frame, "a": self.awareness} if self.awareness else frame

    def _since(self, then: float, stall_then: float, now: float) -> float:
        """Seconds from ``then`` to ``now`` that the node's loop was actually running."""
        return (now - then) - (self.stalled - stall_then)

    def _silence(self, state: _Peer, now: float) -> float:
        return self._since(state.heard_at, state.heard_stall, now)

    # -- who watches whom ----------------------------------------------------------------------

    def partners(self) -> frozenset[PeerId]:
        """The peers we heartbeat (the successor, old ones being handed over) or watch."""
        ours = {*self._handover, *([self._successor] if self._successor else [])}
        return frozenset(ours | self._senders)

    @property
    def successor(self) -> PeerId | None:
        """The peer we heartbeat: the next one after us on the ring of peer ids."""
        return self._successor

    @property
    def senders(self) -> frozenset[PeerId]:
        """The peers that heartbeat us, so that we watch them."""
        return frozenset(self._senders)

    def _ring_successor(self) -> PeerId | None:
        after = [p for p in self._peers if p > self.me]
        return min(after or self._peers, default=None)

    def _ring_predecessor(self) -> PeerId | None:
        before = [p for p in self._peers if p < self.me]
        return max(before or self._peers, default=None)

    @property
    def suspected(self) -> Iterable[PeerId]:
        return list(self._suspects)


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
