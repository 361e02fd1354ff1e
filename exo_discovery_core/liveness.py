"""Liveness: is each connected peer still running? One timer per node, not one per connection.

A crashed peer closes its sockets, and the kernel says so at once; this module is for the peer
that is still there but silent (frozen, ``SIGSTOP``, a wedged loop). memberlist's SWIM and
Lifeguard are the model, over the connections we already hold:

- **Few watchers.** Connected peers sit on a ring ordered by peer id; each node exchanges
  heartbeats only with its ``WATCHERS`` neighbours on either side. A heartbeat says whether the
  sender watches the receiver (``w``), and a node heartbeats back whoever watches it, so views
  that disagree (a mesh still forming) still pair up, and the pairing ends when they agree. A frame of any kind counts as a heartbeat, both ways:
  a connection that carried traffic recently is not pinged. Per node that is a constant handful of
  frames a second, whatever the cluster's size.
- **Suspicion, then confirmation.** A watched peer silent for ``suspect_after`` is only suspected:
  it gets a direct ``probe`` (which any live peer answers at once) and the node tells its other
  peers, which probe it too. Only a probe unanswered for ``confirm_within`` makes it ``dead``;
  any frame from the peer clears the suspicion. A report is never believed: each node is
  convinced by its own probe alone, so no peer can talk a node into dropping another.
- **Slow self, slow verdict** (Lifeguard). The timer measures how late it runs. Time the node's
  own loop spent stalled does not count as anyone's silence, and while the node keeps running late
  its awareness score stretches the time a probe has to be answered. A late node also says so in
  its heartbeats (``a``, its score), and a peer's probes get as long as that peer's own score
  asks for: a node busy meshing is given time, a frozen one (which said nothing) is not.
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

WATCHERS = 1  # ring neighbours watched on each side
MAX_AWARENESS = 3  # a late node gives probes up to (1 + 3) x confirm_within
LATE_AFTER = 0.25  # seconds; a wake-up later than this raises the awareness score
CALM_FOR = 2.0  # seconds of on-time wake-ups that lower it by one

HEARTBEAT: dict[str, Any] = {"type": "hb"}
WATCHING: dict[str, Any] = {"type": "hb", "w": 1}  # the sender watches the receiver
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
    sent_at: float = float("-inf")
    suspected_at: float | None = None
    suspected_stall: float = 0.0
    reported_at: float = float("-inf")  # last time another peer's report made us probe it
    why: str = ""
    awareness: int = 0  # how late it said it runs (its own score, 0..MAX_AWARENESS)


class Liveness:
    """Heartbeats, suspicion and confirmation for every connected peer of one node."""

    def __init__(
        self,
        me: PeerId,
        *,
        interval: float,
        dead_after: float,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.me = me
        self._wake = wake  # called when something falls due sooner than the timer sleeps
        self.interval = interval
        self.dead_after = dead_after
        self.confirm_within = min(1.0, 0.4 * dead_after)
        self.suspect_after = dead_after - self.confirm_within
        self.awareness = 0
        self.stalled = 0.0  # seconds the timer ran late, in total
        self.suspicions = 0  # raised so far (status, tests)
        self._peers: dict[PeerId, _Peer] = {}
        self._ring_partners: frozenset[PeerId] = frozenset()
        self._watchers: dict[PeerId, float] = {}  # they watch us: heartbeated back until then
        self._suspects: set[PeerId] = set()
        self._due: float | None = None  # when the timer should run next
        self._last_tick: float | None = None
        self._calm_since = 0.0

    # -- what the connections tell us ---------------------------------------------------------

    def add(self, peer: PeerId, now: float | None = None) -> None:
        now = _now(now)
        self._peers[peer] = _Peer(heard_at=now, heard_stall=self.stalled)
        self._ring_partners = self._ring()
        if peer in self._ring_partners:
            self._due_by(now + self.interval)

    def remove(self, peer: PeerId) -> None:
        if self._peers.pop(peer, None) is not None:
            self._watchers.pop(peer, None)
            self._suspects.discard(peer)
            self._ring_partners = self._ring()

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
            state.awareness = _score(message.get("a"))
            if message.get("w") == 1:
                if peer not in self._watchers and peer not in self._ring_partners:
                    self._due_by(now + self.interval)  # a new partner: heartbeated back
                self._watchers[peer] = now + self.dead_after
        elif kind == "probe":
            actions.send.append((peer, self._beat(HEARTBEAT)))
        elif kind == SUSPECT:
            self._reported(peer, message.get("peer"), message.get("a"), now, actions)
        return actions

    def _reported(
        self, reporter: PeerId, named: object, message_a: object, now: float, actions: Actions
    ) -> None:
        """Another peer finds ``named`` silent: probe it ourselves (at most once a while)."""
        if named == self.me:  # they find us slow: we probably are
            self.awareness = min(MAX_AWARENESS, self.awareness + 1)
            return
        state = self._peers.get(PeerId(named)) if isinstance(named, str) else None
        if state is None or state.suspected_at is not None:
            return
        state.awareness = max(state.awareness, _score(message_a))
        if now - state.reported_at < self.dead_after:
            return  # one probe per report window, however often it is said
        state.reported_at = now
        self._suspect(PeerId(named), state, now, f"reported silent by {reporter}", actions)
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
        peer's silence or a probe's wait runs out."""
        now = _now(now)
        self._measure_lateness(now)
        actions = Actions()
        partners = self.partners(now)
        for peer in partners | self._suspects:
            state = self._peers[peer]
            if peer in partners and now - state.sent_at >= 0.75 * self.interval:
                beat = WATCHING if peer in self._ring_partners else HEARTBEAT
                actions.send.append((peer, self._beat(beat)))
                state.sent_at = now
            if state.suspected_at is None:
                if peer in partners and self._silence(state, now) >= self.suspect_after:
                    why = f"no heartbeat for {self.suspect_after:g} s"
                    self._suspect(peer, state, now, why, actions)
                    told = suspect_frame(peer, state.awareness)
                    actions.send += [(other, told) for other in self._peers if other != peer]
            elif self._since(state.suspected_at, state.suspected_stall, now) >= self._confirm(state):
                actions.dead.append((peer, f"{state.why}, then no answer to a probe "
                                           f"for {self._confirm(state):g} s"))  # fmt: skip
        for peer, _ in actions.dead:
            self.remove(peer)
        self._due = self._next(now, self.partners(now) if actions.dead else partners)
        return actions

    def _next(self, now: float, partners: frozenset[PeerId]) -> float:
        """The next heartbeat batch, or sooner a silence or a probe's wait running out;
        infinite with no partner and no suspect."""
        due = now + self.interval if partners else math.inf
        for peer in partners | self._suspects:
            state = self._peers[peer]
            if state.suspected_at is not None:
                then, stall, wait = state.suspected_at, state.suspected_stall, self._confirm(state)
            elif peer in partners:
                then, stall, wait = state.heard_at, state.heard_stall, self.suspect_after
            else:
                continue
            due = min(due, then + wait + (self.stalled - stall))
        return max(due, now + 0.01)

    def _measure_lateness(self, now: float) -> None:
        late = 0.0 if self._due is None else max(0.0, now - self._due)
        self.stalled += late
        if late > LATE_AFTER:
            self.awareness = min(MAX_AWARENESS, self.awareness + 1)
            self._calm_since = now
        elif now - self._calm_since >= CALM_FOR and self.awareness > 0:
            self.awareness -= 1
            self._calm_since = now
        self._last_tick = now

    def _suspect(self, peer: PeerId, state: _Peer, now: float, why: str, actions: Actions) -> None:
        self.suspicions += 1
        state.suspected_at, state.suspected_stall, state.why = now, self.stalled, why
        self._suspects.add(peer)
        actions.send.append((peer, PROBE))
        state.sent_at = now

    def _confirm(self, state: _Peer) -> float:
        """How long a probe of that peer may take: longer while we, or it, run late."""
        return self.confirm_within * (1 + max(self.awareness, state.awareness))

    def _beat(self, frame: dict[str, Any]) -> dict[str, Any]:
        """A heartbeat, saying how late we run when we do (so our probes get that long)."""
        return {**frame, "a": self.awareness} if self.awareness else frame

    def _since(self, then: float, stall_then: float, now: float) -> float:
        """Seconds from ``then`` to ``now`` that the node's loop was actually running."""
        return (now - then) - (self.stalled - stall_then)

    def _silence(self, state: _Peer, now: float) -> float:
        return self._since(state.heard_at, state.heard_stall, now)

    # -- who watches whom ----------------------------------------------------------------------

    def partners(self, now: float | None = None) -> frozenset[PeerId]:
        """The peers we heartbeat and watch: ring neighbours, and those that watch us."""
        now = _now(now)
        for peer in [p for p, until in self._watchers.items() if until <= now]:
            del self._watchers[peer]
        return self._ring_partners | self._watchers.keys()

    def _ring(self) -> frozenset[PeerId]:
        ring = sorted([self.me, *self._peers])
        if len(ring) <= 2 * WATCHERS + 1:
            return frozenset(self._peers)
        i = ring.index(self.me)
        around = range(1, WATCHERS + 1)
        return frozenset(ring[(i + k) % len(ring)] for k in around) | frozenset(
            ring[(i - k) % len(ring)] for k in around
        )

    @property
    def suspected(self) -> Iterable[PeerId]:
        return list(self._suspects)


def _now(now: float | None) -> float:
    return time.monotonic() if now is None else now
