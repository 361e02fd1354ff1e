"""The dialer: which known peers to dial, when, and why the last try failed.

It reads snapshots of the peer table and the set of connected peers, and dials every peer that
is known but not connected, one dial at a time per peer, with backoff between failures. A dial
tries the peer's addresses in the order of :class:`~.routes.Paths` (link class, then measured
round trip), in parallel and staggered as Happy Eyeballs does (:mod:`.happy`, RFC 8305): the
first to connect wins and the others are closed. A connected peer that has an address on a
better link class than the one in use (a Thunderbolt cable plugged in beside the Wi-Fi) is
dialed there too; the new connection replaces the old one without the peer ever going down,
and a better path that does not answer is tried again with backoff. Peers heard of only
by peer exchange know of us too: one end of the pair (:func:`first_dialer`, the same answer at
both) dials first and the other waits ``MUTUAL_SECOND_DIAL`` seconds, so a forming mesh makes
no duplicate connections.

Every failed dial leaves its reason (never empty) and the time of the next try, so
``exo-discovery peers`` can say why a peer does not connect. A peer whose every address refused
us in the handshake (another namespace, another version, another id) is tried again only every
``REFUSED_RETRY`` seconds, and its reason says so.

With ``verify_only`` (``connect = false``: discover only) the same loop verifies instead of
connecting: one handshake per peer, which proves its id and reads its record, then closes. A peer
is verified again when its addresses change, and every ``REVERIFY_EVERY`` seconds (so a record
with new metadata reaches a discover-only node too); a failed verification backs off as a dial
does.

With ``max_connections`` (:mod:`.degree`) the dialer keeps at most that many connections: it
dials only while it has room (from a limit of 4, up to one fewer than the limit: the last is
left for inbound), peers without a known id first (a bootstrap address is how a node joins),
then the others in the node's own order of preference; a peer that closed our connection to
keep its own limit is held off like a refusal, so we dial another instead. A node whose
connections say they form a closed group (an island) dials one member past the limit, and a
node with room whom every member it knows holds off dials one of them before its hold ends;
each while no other dial is under way and, the two together, at most once per
``ISLAND_RETRY``: an island is what connections say, and a liar saying it forever costs one
dial per ``ISLAND_RETRY``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

from .backoff import Backoff
from .connections import DialedSelf, DialError, Opened
from .degree import TRIMMED, Preference
from .happy import ATTEMPT_DELAY, AllFailed, interleave, race
from .identity import PeerId
from .limits import TokenBucket
from .models import Address
from .peertable import Peer
from .routes import Paths
from .text import logger, shown

log = logger("exo_discovery.dialer")
T = TypeVar("T")

CONNECT_TIMEOUT = 3.0
REDIAL_INITIAL = 0.25
# seconds the higher id of a hearsay pair waits for the lower one's dial before it dials as a
# fallback: the peer that told us of it tells it of us within about a second (exchange's
# ANNOUNCE_GAP), and on a loaded machine its handshake may take up to handshake_timeout (5 s);
# a shorter wait made both ends dial (hundreds of duplicate handshakes in a 50-member mesh)
MUTUAL_SECOND_DIAL = 6.0
REFUSED_RETRY = 30.0  # seconds; a peer that refused us (namespace, version, id) is not pressed
IDLE_WAKE = 30.0  # seconds; a safety net: every change wakes the loop, each wait has a deadline
REVERIFY_EVERY = 30.0  # seconds between verifications of one peer (verify_only)
MAX_REASON = 300  # characters of a failure reason kept for ``peers``
UPGRADE_RETRY_MAX = 30.0  # seconds; the most between tries of a better path that fails
# seconds between two dials past max_connections out of an island (what our connections say):
# one dial, its trim delay and the new peer's list take about a second
ISLAND_RETRY = 5.0
ARRIVING_WAIT = 5.0  # seconds a peer just reached is not dialed again while it is being kept


def first_dialer(a: PeerId, b: PeerId) -> PeerId:
    """Which end of a hearsay pair dials first: the same answer at both ends, and each node the
    first dialer of about half its pairs. (The lower id of every pair left the lowest ids of a
    50-member mesh to dial nearly all the others, held by their learned-dial pace, and they
    meshed last.) A peer that grinds its id to be the first dialer and never dials only makes
    us wait ``MUTUAL_SECOND_DIAL``, as a lower id could before."""
    low, high = sorted((a, b))
    coin = hashlib.blake2b(f"{low} {high}".encode(), digest_size=1).digest()[0] & 1
    return high if coin else low


class Links(Protocol):
    """What the dialer needs of the connection manager."""

    def connected(self) -> Mapping[PeerId, Address]:
        """The peers connected now, with the address in use."""
        ...

    async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
        """Connect to ``address`` (refusing anyone but ``expected``); DialError if not."""
        ...

    def adopt(self, opened: Opened) -> None:
        """Keep the connection (replacing an older one to that peer)."""
        ...

    async def discard(self, opened: Opened) -> None:
        """Close a connection another dial beat."""
        ...

    async def verify(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        """Handshake with ``address`` to learn who it is, then close; DialError if not."""
        ...


@dataclass(frozen=True)
class DialStatus:
    """What ``peers`` shows for a peer that is not connected."""

    last_reason: str | None  # None until a dial failed
    retry_in: float  # seconds until the next try (0: now)
    incompatible: str | None = None  # the protocol it speaks, when the last dial found not ours


@dataclass
class _State:
    backoff: Backoff
    next_at: float = 0.0
    busy: bool = False
    last_reason: str | None = None
    incompatible: str | None = None
    held: bool = False  # held off after it closed us to keep its max_connections
    warned: set[str] = field(default_factory=set)
    upgrade: Backoff = field(default_factory=lambda: Backoff(1.0, UPGRADE_RETRY_MAX))
    upgrade_at: float = 0.0
    paced: bool = False  # this dial took a token of the learned-dial pace


class Dialer:
    """Dials known, unconnected peers; run :meth:`run` in a task group, :meth:`wake` on change."""

    def __init__(
        self,
        me: PeerId,
        peers: Callable[[], Mapping[str, Peer]],
        links: Links,
        *,
        paths: Paths | None = None,
        redial_max: float = 30.0,
        mutual_source: str = "exchange",
        learned: TokenBucket | None = None,
        clock: Callable[[], float] = time.monotonic,
        verify_only: bool = False,
        max_connections: int | None = None,
        attempt_delay: float = ATTEMPT_DELAY,
        island: Callable[[], bool] | None = None,
    ) -> None:
        """``learned`` paces the dials of peers known only through ``mutual_source`` (hearsay:
        whatever a peer says, it cannot make us dial faster than that); a dial whose handshake
        proves the very peer we were told of gives its token back, so the pace bounds the dials
        that hearsay wasted (at an address that is not that peer) and a real mesh of any size
        is dialed at once."""
        self._me = me
        self._peers = peers
        self._links = links
        self._paths = paths
        self._attempt_delay = attempt_delay
        # peers a dial just reached, by id: the table re-keys a peer its first handshake named,
        # and until the connection is kept it must not look like one to dial again
        self._arriving: dict[PeerId, float] = {}
        self._redial_max = redial_max
        self._mutual_source = mutual_source
        self._learned = learned
        self._clock = clock
        self._verify_only = verify_only
        self._preference = Preference(me, max_connections) if max_connections else None
        self._island = island  # with a limit: True while our connections are cut off together
        self._island_at = -ISLAND_RETRY  # when we last dialed past the limit out of an island
        # verify_only: by id, the addresses it was verified at and when
        self._verified: dict[PeerId, tuple[frozenset[Address], float]] = {}
        self._states: dict[str, _State] = {}
        self._wake = anyio.Event()

    def wake(self) -> None:
        """Something changed (the table, a connection): look again now."""
        self._wake.set()

    def peer_down(self, peer_id: PeerId, reason: str = "") -> None:
        """A connection ended: try that peer again at once, then back off; but one closed to
        keep a ``max_connections`` limit (ours or the peer's) is held off as a refusal while
        we have other connections (with none, it is our way in: backed off, not held off)."""
        self._arriving.pop(peer_id, None)
        trimmed, others = TRIMMED in reason, bool(self._links.connected())
        state = self._states.get(str(peer_id))
        if state is None and trimmed and others:
            # a peer we never dialed (it dialed us) or whose entry the table dropped is held
            # off all the same: without a state it was dialed again as soon as it was heard
            # of, and trimmed again (a member the node trimmed dialed it back within 1 s)
            state = self._new_state(str(peer_id))
        if state is not None:
            if trimmed and others:
                state.next_at = self._clock() + REFUSED_RETRY
                state.held = True
                state.last_reason = (
                    f"closed to keep max_connections (tried again every {REFUSED_RETRY:g} s)"
                )
            elif trimmed:
                state.next_at = self._clock() + state.backoff.next()
            else:
                state.next_at = 0.0
        if not others:
            self._release_holds()
        self.wake()

    def _release_holds(self) -> None:
        """With no connection left (the members we kept went away), the peers that trimmed us
        are our way back in: a hold meant for a node with other links would isolate it."""
        now = self._clock()
        for state in self._states.values():
            if state.held:
                state.held = False
                state.next_at = min(state.next_at, now)

    def status(self) -> dict[str, DialStatus]:
        """By table key, for every peer the dialer has tried or is waiting to try."""
        now = self._clock()
        return {
            key: DialStatus(state.last_reason, max(0.0, state.next_at - now), state.incompatible)
            for key, state in self._states.items()
        }

    # -- the loop ----------------------------------------------------------------------------

    def _order(self, addresses: Iterable[Address]) -> list[Address]:
        return self._paths.ordered(addresses) if self._paths else list(addresses)

    async def run(self, tg: TaskGroup) -> None:
        while True:
            due, wait = self.due()
            for peer, addresses in due:
                tg.start_soon(self.attempt, peer, addresses)
            with anyio.move_on_after(wait):
                await self._wake.wait()
            self._wake = anyio.Event()

    def due(self) -> tuple[list[tuple[Peer, list[Address]]], float]:
        """The peers to dial now (marked busy) with the addresses to try, and how long until
        the next one is due. A connected peer is due when it has a better path than its own."""
        now = self._clock()
        peers = self._peers()
        connected = self._links.connected()
        for key in self._states.keys() - peers.keys():  # a hold outlives the table entry
            gone = self._states[key]
            if not gone.busy and not (gone.held and gone.next_at > now):
                del self._states[key]
        known = {peer.peer_id for peer in peers.values()}
        for peer_id in self._verified.keys() - known:
            del self._verified[peer_id]
        soonest = IDLE_WAKE
        # the first wait of a peer not connected to run out: a dial only if the limit leaves
        # room (at rest with max_connections it leaves none, and the holds of the members that
        # trimmed us ran out one by one, each a look at every peer with nothing to dial)
        later = IDLE_WAKE
        eligible: list[Peer] = []
        held: list[Peer] = []  # held off after they trimmed us (max_connections)
        waiting = False  # a peer not held off is due soon, or a connection is arriving
        upgrades: list[tuple[Peer, list[Address]]] = []  # connected already: no limit applies
        for peer_id, at in list(self._arriving.items()):
            if peer_id in connected or now - at >= ARRIVING_WAIT:
                del self._arriving[peer_id]
            else:
                soonest = min(soonest, at + ARRIVING_WAIT - now)
                waiting = True
        for key, peer in peers.items():
            if peer.peer_id in self._arriving:
                continue
            in_use = connected.get(peer.peer_id) if peer.peer_id is not None else None
            if in_use is not None:
                better = [] if self._verify_only else self._better_paths(peer, in_use)
                state = self._states.get(key)
                if not better or (state is not None and state.busy):
                    continue
                if state is None:
                    state = self._new_state(key)
                if state.upgrade_at > now:
                    soonest = min(soonest, state.upgrade_at - now)
                    continue
                state.busy = True
                upgrades.append((peer, better))
                continue
            state = self._states.get(key)
            if state is None:
                state = self._new_state(key)
                if self._dials_second(peer):
                    state.next_at = now + MUTUAL_SECOND_DIAL  # let the peer dial first
            if state.busy:
                waiting = True
                continue
            again = self._reverify_at(peer) if self._verify_only else None
            if again is not None and again > now:  # verified lately: the loop looks again then
                soonest = min(soonest, again - now)
                continue
            if state.next_at > now:
                later = min(later, state.next_at - now)
                if state.held:
                    held.append(peer)
                elif state.next_at - now < ISLAND_RETRY:  # tried soon anyway (a lost one
                    waiting = True  # backs off to redial_max: it does not count)
                continue
            eligible.append(peer)
        due: list[tuple[Peer, list[Address]]] = upgrades
        dialing = sum(1 for state in self._states.values() if state.busy)  # upgrades included
        # how many more dials max_connections leaves room for (None: no limit)
        room = (
            None
            if self._preference is None
            else self._preference.dial_to - len(connected) - dialing
        )
        if room is None or room > 0:  # else a connection that ends, or a dial that does, wakes us
            soonest = min(soonest, later)
        held = [] if waiting else held  # no one else to dial, now or later: only then
        within, island_wait = self._within_limit(
            eligible, room, dialing > 0, peers.values(), now, held
        )
        soonest = min(soonest, island_wait)
        for peer in within:
            state = self._states[peer.key]
            paced = self._learned if peer.sources == {self._mutual_source} else None
            if paced is not None and not paced.try_take():  # hearsay only: paced
                soonest = min(soonest, paced.wait_time())
                continue
            state.busy, state.paced, state.held = True, paced is not None, False
            due.append((peer, self._order(peer.addresses)))
        return due, soonest

    def _new_state(self, key: str) -> _State:
        """The dial state of a peer first seen (by its table key), its backoff at the start."""
        state = self._states[key] = _State(Backoff(REDIAL_INITIAL, self._redial_max))
        return state

    def _better_paths(self, peer: Peer, in_use: Address) -> list[Address]:
        """The peer's addresses on a better link class than the one in use, best first."""
        if self._paths is None or all(a == in_use for a in peer.addresses):
            return []  # nothing else to try (the common case): no link class to look up
        current = self._paths.link(in_use)
        return [a for a in self._order(peer.addresses) if self._paths.link(a) < current]

    def _within_limit(
        self,
        eligible: list[Peer],
        room: int | None,
        dialing: bool,
        known: Iterable[Peer],
        now: float,
        held: list[Peer],
    ) -> tuple[list[Peer], float]:
        """All of ``eligible`` without a limit (``room`` None); with one, as many as there is
        ``room`` for (dials under way, ``dialing``, counted in it) up to
        :attr:`~.degree.Preference.dial_to`, in the order of preference among all ``known`` (so
        the trimming keeps the same; peers of unknown id first). Two exceptions, each one dial
        while no dial is under way and at most one per ``ISLAND_RETRY`` (the two together):
        out of an island, one dial past the limit (the island is what connections say, so a
        liar could otherwise keep us dialing member after member); with room but no one to
        dial, every member we know holding us off (``held``: they trimmed us), one of them
        before its hold ends (waiting the hold out, groups that trims had cut off from each
        other stayed apart for up to ``REFUSED_RETRY``: 12 members with M = 3 split 5 / 7 for
        14 s, their three members with room each holding off all the others). The seconds
        until such a dial may come are returned too."""
        if self._preference is None or room is None or not (eligible or held):
            return eligible, IDLE_WAKE
        wait = IDLE_WAKE
        starved = room > 0 and not eligible
        if not dialing and (starved or (room <= 0 and self._island is not None)):
            if now < self._island_at + ISLAND_RETRY:
                wait = self._island_at + ISLAND_RETRY - now
            elif starved:
                eligible, room = held, 1  # one of them, before its hold ends
                self._island_at = now
                log.debug("every member that could be dialed holds this node off: one of them")
            elif self._island is not None and self._island():
                room = 1  # one more, past the limit if need be (the trim keeps it)
                self._island_at = now
        if room <= 0:
            return [], wait
        rank = {p: i for i, p in enumerate(self._preference.ranked(
            peer.peer_id for peer in known if peer.peer_id is not None
        ))}  # fmt: skip
        ordered = sorted(eligible, key=lambda p: -1 if p.peer_id is None else rank[p.peer_id])
        return ordered[:room], wait

    def _reverify_at(self, peer: Peer) -> float | None:
        """When a peer verified at exactly these addresses is due again; None if it was not
        (by its id: the table re-keys a peer whose id a verification taught it)."""
        if peer.peer_id is None or peer.peer_id not in self._verified:
            return None
        addresses, at = self._verified[peer.peer_id]
        return at + REVERIFY_EVERY if addresses == frozenset(peer.addresses) else None

    def _dials_second(self, peer: Peer) -> bool:
        """Without a limit both ends of a hearsay pair want the link: :func:`first_dialer`
        dials first. With one the ends choose independently, so neither waits."""
        return (
            self._preference is None
            and peer.sources == {self._mutual_source}
            and peer.peer_id is not None
            and first_dialer(peer.peer_id, self._me) != self._me
        )

    async def attempt(self, peer: Peer, addresses: list[Address] | None = None) -> None:
        """Reach ``peer`` at ``addresses`` (default: all, best first) and record why if not:
        connect Happy Eyeballs style and keep the first connection made, or (``verify_only``)
        verify one address after the other."""
        state = self._states[peer.key]
        state.incompatible = None
        upgrading = addresses is not None and peer.peer_id in self._links.connected()
        order = self._order(peer.addresses) if addresses is None else addresses
        failures: list[tuple[Address, str, bool]] = []  # address, why, refused by the peer
        try:
            if self._verify_only:
                reached = await self._verify(state, peer, order, failures)
            else:
                reached = await self._connect(state, peer, order, failures)
            if reached:
                if state.paced and self._learned is not None:  # proven: it was no hearsay
                    self._learned.give_back()
                state.last_reason = None
                state.backoff.reset()
                state.upgrade.reset()
                state.next_at = self._clock() + state.backoff.next()
                return
            reason = "; ".join(f"{a}: {why}" for a, why, _ in failures) or "no address to dial"
            if upgrading:  # still connected on the old path: no dial failure to show
                state.upgrade_at = self._clock() + state.upgrade.next()
                log.debug(
                    "better path to %s not taken: %s", peer.peer_id, shown(reason, MAX_REASON)
                )
                return
            delay = state.backoff.next()
            refusals = sum(refused for _, _, refused in failures)
            if refusals and refusals == len(failures):  # asking again soon changes nothing
                delay = max(delay, REFUSED_RETRY)
                reason += f" (refused: tried again every {REFUSED_RETRY:g} s)"
            state.last_reason = shown(reason, MAX_REASON)  # part may be the peer's
            state.next_at = self._clock() + delay
        finally:
            state.busy = state.paced = False
            self.wake()

    async def _one(
        self,
        state: _State,
        peer: Peer,
        address: Address,
        failures: list[tuple[Address, str, bool]],
        reach: Callable[[Address, PeerId | None, float], Awaitable[T]],
    ) -> T:
        """One address reached by ``reach`` (open or verify); a failure is recorded and raised."""
        try:
            reached = await reach(address, peer.peer_id, CONNECT_TIMEOUT)
            if isinstance(reached, Opened):  # no await since the handshake named it
                self._arriving[reached.peer_id] = self._clock()
            return reached
        except DialedSelf as exc:
            failures.append((address, str(exc), False))
            log.debug("dial %s: %s", address, exc)  # the table drops this address now
            raise
        except DialError as exc:
            failures.append((address, str(exc), exc.refused))
            state.incompatible = exc.incompatible or state.incompatible
            self._log_failure(state, address, str(exc), loud=exc.refused)
            raise
        except Exception as exc:  # one bad address never stops the node
            reason = f"unexpected {type(exc).__name__}: {exc}"
            failures.append((address, reason, False))
            self._log_failure(state, address, reason, loud=True)
            raise

    async def _verify(
        self,
        state: _State,
        peer: Peer,
        order: list[Address],
        failures: list[tuple[Address, str, bool]],
    ) -> bool:
        """``verify_only``: one handshake, address after address, until one proves the peer."""
        for address in order:
            try:
                peer_id = await self._one(state, peer, address, failures, self._links.verify)
            except DialedSelf:
                return False
            except Exception:  # noqa: BLE001 - recorded by _one; the next address's turn
                continue
            log.debug("verified %s: it is %s", address, peer_id)
            self._verified[peer_id] = (frozenset(peer.addresses), self._clock())
            return True
        return False

    async def _connect(
        self,
        state: _State,
        peer: Peer,
        order: list[Address],
        failures: list[tuple[Address, str, bool]],
    ) -> bool:
        """Happy Eyeballs over ``order`` (families interleaved within a link class); the first
        connection is kept, the others closed. Dialing ourselves at one address ends it all:
        these addresses are ours, none of them is the peer."""
        if self._paths is not None:
            order = interleave(order, self._paths.link)
        if not order:
            return False
        scope = anyio.CancelScope()

        def at(address: Address) -> Callable[[], Awaitable[Opened]]:
            async def open_() -> Opened:
                try:
                    return await self._one(state, peer, address, failures, self._links.open)
                except DialedSelf:
                    scope.cancel()
                    raise

            return open_

        won: Opened | None = None
        with scope:
            try:
                _, opened = await race(
                    [at(a) for a in order], delay=self._attempt_delay, discard=self._links.discard
                )
                won = opened
            except AllFailed:
                return False
        if won is None:
            return False
        if self._paths is not None:  # first: the connected event shows it
            self._paths.measured(won.address, won.connect_seconds)
        self._links.adopt(won)
        log.debug("dialed %s: it is %s", won.address, won.peer_id)
        return True

    def _log_failure(self, state: _State, address: Address, reason: str, *, loud: bool) -> None:
        """A warning (refusals) or info line once per peer and reason; repeats go to debug."""
        first = reason not in state.warned
        if len(state.warned) >= 16:  # a peer can vary its refusals; what we remember is bounded
            state.warned.clear()
        state.warned.add(reason)
        level = (logging.WARNING if loud else logging.INFO) if first else logging.DEBUG
        log.log(level, "dial %s failed: %s", address, shown(reason, MAX_REASON))
