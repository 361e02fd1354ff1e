"""Peer exchange: connected nodes tell each other whom they are connected to, in signed records.

With it one bootstrap address (or one mDNS answer) is enough for a full mesh: a node that joins
through A learns A's peers and dials them. What travels is each peer's own signed record
(:mod:`.records`), never a bare address: a sender can say *that* it is connected to a peer, but
only the peer itself can say where it listens or what its metadata is. So an address heard this
way is only a hint for reaching that peer, which the handshake with it confirms, and a stranger
cannot point us elsewhere: a record it did not sign fails, an old one loses to a newer one.

Two messages: ``{"type": "peers", "peers": [peer id, ...]}`` (the sender's connections now; it
replaces the sender's previous list) and ``{"type": "records", "records": [base64, ...]}`` (the
records of those peers that this receiver was not sent yet, in as many messages as it takes;
the first of them rides in the ``peers`` message itself when it fits, ``"records": [...]``,
read after its list: one frame for both, where a forming mesh sent two). Bounds: at most
``per_sender`` peers taken from one sender, ``total`` from all senders together (first come);
a record is kept only for a peer some sender lists; what a sender said is forgotten when it
disconnects.

**Deltas.** A mesh forming changes every node's list many times a second, and a full list to
each of N connections at each change is O(N²) ids per node. So after the first (full) list the
sender sends only what changed, ``{"type": "peers", "n": 7, "add": [...], "remove": [...]}``
(``ages`` then aligned with ``add``), and every exchange message to one receiver carries the
next number ``n`` of that stream. The receiver applies a delta only on top of a numbered full
list, in order (``n`` one past the last): a gap (a frame lost with a replaced connection) makes
it ignore the sender's deltas and ask, ``{"type": "peers_resync"}``, for the full list again,
which the sender grants at most once per ``RESYNC_EVERY`` seconds. A delta is bounded exactly
as a full list is (its result is one list of the sender's, under the same bounds), and what it
changes is the sender's own list only. Without relay (a full mesh) a delta that only adds
peers the receiver is connected to (as it or they list them) waits for the next one with news:
the receiver knows its own connections, and in a forming mesh most deltas were such (a false
claim of a connection delays only the listing of the one that claims it).

**Relay of members** (``relay``, on with ``max_connections``): a node then lists not only its
connections but every member it knows, each with an ``age`` (``"ages": [seconds, ...]``, aligned
with ``peers``; absent or 0 means "connected to it now"), and sends their records too, each
once per (peer id, seq) and recipient. So every member reaches every node over a few hops while
each keeps a few connections; a delta that carries a member its recipient does not list to us
(a record we did not send it) goes ``NEWS_GAP`` after the last one, not ``ANNOUNCE_GAP``, so
news crosses each hop within ~0.5 s while deltas with nothing new stay coalesced. The rule
that ages a gone member out: a listing at age 0 is a standing claim of the sender (it holds
while the sender lists the peer and stays connected to us); a listing at age ``a > 0`` is
hearsay, and counts as a vouch made ``a`` seconds before it arrived. A node's age for a member
is 0 while it is connected to it, else the least age any of its connections gives it plus
``HOP_AGE``, growing with the clock. Only a connection to the
member itself resets the age, and every relay adds to it, so when no node connected to the
member vouches for it any more, its age grows everywhere (loops included: no count to
infinity) and past ``MEMBER_TTL`` it is dropped, from the table and from what is relayed.
A sender can keep a gone member alive while it keeps listing it (as it can without relay).

**Failure reports** (relay only). Ageing alone needs every hearsay member's age said again
and again, O(members) per connection; so a departure is said instead, and the ages only every
``REFRESH`` (30 s, a backstop for a report that got lost; ``MEMBER_TTL`` four of them). A node
whose connection to a member X ends (X said goodbye, its socket closed, or the ring watcher's
probe went unanswered; not a trim to keep ``max_connections``, not a duplicate) tells its
connections ``{"type": "gone", "peer": X, "seq": S}``, S the seq of X's newest record, and each
relays it once per (X, S). A node not connected to X then holds a *tombstone*: X is left out of
its table and of what it relays, whoever still lists it, until X shows a record newer than S
(or connects to it). A node connected to X believes no report: it probes X itself (the
liveness probe; only no answer drops it, and then it reports X in turn) and passes the report
to X alone; X, alive, *refutes* it with a new signed record (a higher seq, as serf's
incarnation numbers), which the relay carries everywhere and which ends every tombstone.
What a report can do is bounded: only a connected, authenticated member sends one, at most
``GONE_RATE`` a second (``GONE_BURST`` at once); it counts only with the seq of the record the
receiver holds (a stale or a made-up one is ignored, so it can hide X only until X's next
record); one about a member unknown to the receiver is dropped, never relayed; and none
removes a member the receiver is connected to.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import math
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeGuard

import anyio
from anyio.abc import TaskGroup

from . import wire
from .backoff import JITTER
from .identity import InvalidPeerId, PeerId
from .limits import TokenBucket
from .models import Address, PeerCandidate
from .peertable import PeerTable
from .records import MAX_RECORD_BYTES, PeerRecord, RecordError, signer, verify
from .routes import usable_from_peer
from .text import logger

SOURCE = "exchange"
MAX_PEERS = 100  # ids in one peers message: per_sender is capped at this
REFRESH = 30.0  # seconds between re-announcements of relayed members' ages (relay only): a
# backstop for lost failure reports, so at rest it is the relay's one cost that grows with N
MEMBER_TTL = 4 * REFRESH  # seconds: a relayed member not vouched for this long is gone
HOP_AGE = 0.1  # seconds added by each relay, so ages only grow around a loop
GONE = "gone"  # a failure report: {"type": "gone", "peer": id, "seq": its record's seq}
GONE_RATE = 10.0  # failure reports taken from one sender a second ...
GONE_BURST = float(MAX_PEERS)  # ... and at once (a member's neighbours failing together)
REFUTE_EVERY = 1.0  # seconds: the least between two new records of ours that refute reports
REPORTS_KEPT = 4096  # (member, seq) pairs remembered as reported: ids are cheap to make
RESYNC_EVERY = 1.0  # seconds: the least between two full lists sent on request to one peer
COALESCE = 0.05  # seconds: the table is refreshed once per burst of exchange messages
RESYNC = {"type": "peers_resync"}
ANNOUNCE_DELAY = (0.1, 0.3)  # seconds; random, so a mesh's announcements do not all coincide
ANNOUNCE_GAP = 1.0  # seconds: the least between two deltas to one peer (its first list: at once)
NEWS_GAP = 0.25  # seconds: the same, for a delta with a member new to that peer (relay only)
_ROOM = wire.MAX_FRAME - 64  # a records message's body, with room for its JSON around it
log = logger("exo_discovery.exchange")


class Outbox:
    """What we tell each connected peer: the ids we list (in full once, then what changed), each
    record once while listed (again when a newer one replaces it, or when it is listed again: a
    receiver forgets the record of a member no sender lists), every message numbered."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sent: dict[PeerId, dict[PeerId, int]] = {}
        self._lists: dict[PeerId, dict[str, float]] = {}  # what the recipient holds: id -> age
        self._numbers: dict[PeerId, int] = {}
        self._told_at: dict[PeerId, float] = {}  # when the recipient was last sent anything

    def due_in(self, recipient: PeerId, now: float, *, news: bool = False) -> float:
        """Seconds until ``recipient`` may be sent a delta again (0: now; a new recipient, whose
        first list is how it learns the mesh, at once); ``news`` (see :meth:`news_for`): after
        ``NEWS_GAP``, not ``ANNOUNCE_GAP``. Either way at most one delta per gap."""
        if recipient not in self._lists:
            return 0.0
        gap = NEWS_GAP if news else ANNOUNCE_GAP
        return max(0.0, self._told_at.get(recipient, -gap) + gap - now)

    def news_for(
        self, recipient: PeerId, records: Mapping[PeerId, PeerRecord], knows: Collection[PeerId]
    ) -> bool:
        """Whether ``records`` (what we list) hold one we did not send ``recipient`` of a member
        it does not list to us itself (``knows``): a member new to it, which with relay is
        what its member list is made of, hop after hop. A delta that only moves ages or
        connections it knows of carries none."""
        sent = self._sent.get(recipient, {})
        others = (r for pid, r in records.items() if pid != recipient)
        for record in itertools.islice(others, MAX_PEERS):  # what messages() would list
            if sent.get(record.peer_id) != record.seq and record.peer_id not in knows:
                return True
        return False

    def messages(
        self,
        recipient: PeerId,
        records: Mapping[PeerId, PeerRecord],
        ages: Mapping[PeerId, float] | None = None,
        *,
        again: bool = False,
        has: Collection[PeerId] = (),
        hold_known: bool = False,
    ) -> list[dict[str, Any]]:
        """The messages to send ``recipient`` now, given the records of the peers we list (our
        connections; with relay our members, aged by ``ages``); ``again``: the hearsay ages
        again even if unchanged (a refresh that keeps relayed members young). The records of
        the peers it ``has`` (its own connections, as it or they list them: their handshakes
        showed it their records) are not sent, until it no longer has them. A peer that
        claims a connection it lacks withholds only its own record from that recipient.
        ``hold_known`` (a full mesh): a delta that only adds peers it ``has`` waits for one
        with news (it knows its own connections). Records ride in the peers message when
        they fit (one frame, not two), the rest in ``records`` messages."""
        others = [r for pid, r in records.items() if pid != recipient][:MAX_PEERS]
        sent = self._sent.setdefault(recipient, {})
        # keyed by the records' own peer ids (str() would copy each): one string per member,
        # however many recipients' lists are kept, not members x recipients
        listing: dict[str, float] = {
            r.peer_id: round(ages.get(r.peer_id, 0.0), 2) if ages else 0.0 for r in others
        }
        held = self._lists.get(recipient)
        change = _change(held, listing, again=again)
        if hold_known and held is not None and change is not None and _adds_only(change, has):
            change, listing = None, held  # nothing it lacks: said with the next news
        self._lists[recipient] = listing
        for peer_id in [p for p in sent if str(p) not in listing]:
            del sent[
                peer_id
            ]  # no longer listed: the recipient may drop its record; again if re-listed
        riding: list[str] = []  # in the peers message: one frame, not two
        batches: list[list[str]] = []
        size = _ROOM if change is None else _size(change)  # none: nothing to ride in
        for record in others:
            if sent.get(record.peer_id) == record.seq or record.peer_id in has:
                continue
            encoded = record.relayed
            cost = len(encoded) + 3
            if not batches and size + cost <= _ROOM:
                riding.append(encoded)
            else:
                if not batches or size + cost > _ROOM:
                    batches.append([])
                    size = 0
                batches[-1].append(encoded)
            size += cost
            sent[record.peer_id] = record.seq
        out: list[dict[str, Any]] = []
        if change is not None:
            out.append({**change, "records": riding} if riding else change)
        out += [{"type": "records", "records": batch} for batch in batches]
        if out:
            self._told_at[recipient] = self._clock()
        return [self.numbered(recipient, message) for message in out]

    def own(self, recipient: PeerId, record: PeerRecord) -> dict[str, Any]:
        """Our own new record (new metadata), for one connected peer."""
        return self.numbered(recipient, {"type": "records", "records": [record.relayed]})

    def numbered(self, recipient: PeerId, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` with the next number of the stream to ``recipient`` (sent at once)."""
        number = self._numbers.get(recipient, 0)
        self._numbers[recipient] = number + 1
        return {**message, "n": number}

    def forget(self, recipient: PeerId) -> None:
        """Start afresh with ``recipient``: a full list and every record next time."""
        self._sent.pop(recipient, None)
        self._lists.pop(recipient, None)
        self._told_at.pop(recipient, None)


def _size(message: Mapping[str, Any]) -> int:
    """At least the bytes of a peers message without records (ids, ages, numbers, keys)."""
    ids = [i for key in ("peers", "add", "remove") for i in message.get(key, ())]
    return 64 + sum(len(i) + 16 for i in ids)


def _adds_only(change: Mapping[str, Any], has: Collection[PeerId]) -> bool:
    """``change`` is a delta that only adds peers in ``has``."""
    return "add" in change and not change["remove"] and all(i in has for i in change["add"])


def _change(
    held: Mapping[str, float] | None, listing: Mapping[str, float], *, again: bool
) -> dict[str, Any] | None:
    """The peers message that turns what the recipient ``held`` into ``listing``: the full list
    the first time (or when no smaller), else a delta; None when nothing is to be said."""
    relay = any(listing.values()) or (held is not None and any(held.values()))
    if held is not None:
        remove = [i for i in held if i not in listing]
        add = [
            i
            for i, age in listing.items()
            if i not in held or (held[i] == 0) != (age == 0) or (again and age > 0)
        ]
        if not add and not remove:
            return None
        if len(add) + len(remove) < len(listing):
            delta: dict[str, Any] = {"type": "peers", "add": add, "remove": remove}
            if relay:
                delta["ages"] = [listing[i] for i in add]
            return delta
    full: dict[str, Any] = {"type": "peers", "peers": list(listing)}
    if relay:
        full["ages"] = list(listing.values())
    return full


class Heard:
    """What connected peers told us: whom each is connected to, and the newest record of each.

    ``candidates()`` is the exchange's peer set: one candidate per listed peer of which a
    record is known, at the usable addresses of its newest record.
    """

    def __init__(
        self,
        me: PeerId,
        *,
        per_sender: int,
        total: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self.per_sender = min(per_sender, MAX_PEERS)
        self.total = total
        self._clock = clock
        self._lists: dict[PeerId, list[PeerId]] = {}
        # by sender, by listed peer: when the vouch it relayed was made (None: standing, age 0)
        self._vouched: dict[PeerId, dict[PeerId, float | None]] = {}
        self._local: dict[PeerId, bool] = {}
        self._count: dict[PeerId, int] = {}  # by listed peer: how many senders list it
        self._local_count: dict[PeerId, int] = {}  # the same, senders on this host only
        self._records: dict[PeerId, PeerRecord] = {}
        self._ids: dict[str, PeerId] = {}  # the peers counted, by their text
        self._next: dict[PeerId, int] = {}  # by sender: the number its next message must have
        self._gap: dict[PeerId, float] = {}  # by sender out of step: when we last asked it
        # by listed peer: the record and locality its candidate was made from, and the candidate
        self._candidates: dict[PeerId, tuple[PeerRecord, bool, PeerCandidate | None]] = {}
        # members reported gone: the seq of the record reported, and when (a tombstone)
        self._gone: dict[PeerId, tuple[int, float]] = {}

    # -- what senders say ---------------------------------------------------------------------

    def peers(self, sender: PeerId, message: dict[str, Any], *, sender_on_this_host: bool) -> bool:
        """A ``peers`` message, full or a delta; True if the candidates may have changed: a peer
        is listed now by no sender or by a first one (of all, or of those on this host). When
        one member goes, each of the others says so, and only the last of those changes
        anything."""
        if "peers" not in message and ("add" in message or "remove" in message):
            return self._delta(sender, message)
        entries = message.get("peers")
        if not isinstance(entries, list):
            log.debug("peer %s sent a peers message without a list", sender)
            entries = []
        wanted: dict[PeerId, float | None] = {}
        for peer_id, vouch in self._entries(sender, entries, message.get("ages")):
            if len(wanted) >= self.per_sender:
                break
            if peer_id in wanted:
                continue
            if peer_id not in self._count and len(self._count) >= self.total:
                continue  # known through exchange in all: first come
            wanted[peer_id] = vouch
        number = message.get("n")
        if isinstance(number, int) and _is_number(number):
            self._next[sender] = number + 1  # deltas may follow this list
        else:
            self._next.pop(sender, None)
        self._gap.pop(sender, None)
        moved = self._local.get(sender, sender_on_this_host) != sender_on_this_host
        changed = moved and self._set(sender, [])  # its old listing counted where it was
        self._local[sender] = sender_on_this_host
        self._vouched[sender] = wanted
        return self._set(sender, list(wanted)) or changed

    def _delta(self, sender: PeerId, message: dict[str, Any]) -> bool:
        """A delta on the sender's list: applied only in order on top of a numbered full list
        (else the sender is out of step: see :meth:`out_of_step`)."""
        if not self.in_step(sender, message.get("n"), delta=True):
            return False
        wanted = dict(self._vouched.get(sender, {}))
        remove = message.get("remove")
        for entry in remove[:MAX_PEERS] if isinstance(remove, list) else []:
            peer_id = _peer_id(entry)
            if peer_id is not None:
                wanted.pop(peer_id, None)
        add = message.get("add")
        for peer_id, vouch in self._entries(sender, add if isinstance(add, list) else [],
                                            message.get("ages")):  # fmt: skip
            if peer_id not in wanted:
                if len(wanted) >= self.per_sender:
                    continue
                if peer_id not in self._count and len(self._count) >= self.total:
                    continue
            wanted[peer_id] = vouch  # a vouch made again: as young as it says
        self._vouched[sender] = wanted
        return self._set(sender, list(wanted))

    def in_step(self, sender: PeerId, number: Any, *, delta: bool = False) -> bool:
        """Count a numbered message of ``sender``'s stream; False if it is not the next one,
        and then the sender is out of step until its next full list. A delta is in step only
        after a numbered full list; other messages are counted only then."""
        expected = self._next.get(sender)
        if expected is not None and _is_number(number) and number == expected:
            self._next[sender] = expected + 1
            return True
        if expected is not None or delta:
            self._next.pop(sender, None)
            self._gap.setdefault(sender, self._clock() - RESYNC_EVERY)
        return False

    def out_of_step(self, sender: PeerId) -> bool:
        """True (at most once per ``RESYNC_EVERY``) while ``sender``'s deltas are ignored for a
        gap in its stream: time to ask it for its full list again."""
        asked = self._gap.get(sender)
        now = self._clock()
        if asked is None or now - asked < RESYNC_EVERY:
            return False
        self._gap[sender] = now
        return True

    def _entries(
        self, sender: PeerId, entries: list[Any], ages: Any
    ) -> Iterator[tuple[PeerId, float | None]]:
        """The well-formed entries of a list (not us, not the sender), each with when its vouch
        was made (None: standing, age 0); an entry with an age not in 0..MEMBER_TTL is
        skipped, and ages that are not one each mean all are the sender's connections."""
        if not isinstance(ages, list) or len(ages) != len(entries):
            ages = [0] * len(entries)
        now = self._clock()
        for entry, age in zip(entries[:MAX_PEERS], ages, strict=False):
            # a relay's refresh lists the same ids every time: those we count need no parsing
            peer_id = self._ids.get(entry) if isinstance(entry, str) else None
            peer_id = peer_id or _peer_id(entry)
            if peer_id is None or peer_id in (self.me, sender):
                continue
            if not isinstance(age, int | float) or not 0 <= age < MEMBER_TTL:
                continue  # a bool is an int: True is age 1, harmless
            yield peer_id, (now - age if age > 0 else None)

    def records(self, sender: PeerId, message: dict[str, Any]) -> list[PeerRecord]:
        """A ``records`` message: the records that were news (see :meth:`take`)."""
        self.in_step(sender, message.get("n"))
        return self.take(sender, message.get("records"))

    def take(self, sender: PeerId, entries: Any) -> list[PeerRecord]:
        """The records of a ``records`` message, or of a ``peers`` message they rode in (after
        its list): those that were news, kept only for listed peers (or the sender's own); bad
        ones are skipped, never fatal, and at most ``MAX_PEERS + 1`` are looked at."""
        if not isinstance(entries, list):
            return []
        listed = set(self._lists.get(sender, ()))
        wanted = listed | {sender}
        news = []
        for entry in entries[: MAX_PEERS + 1]:
            record = _record(entry, wanted=wanted)
            if record is None:
                log.debug("peer %s sent a record not wanted or not valid; skipped", sender)
                continue
            if record.peer_id == sender:
                news.append(record)  # the sender's own new record: the node keeps it
            elif record.peer_id in listed and record.newer_than(self._records.get(record.peer_id)):
                self._records[record.peer_id] = record
                buried = self.buried(record.peer_id)
                if buried is not None and record.seq > buried:
                    self.revive(record.peer_id)  # it refuted the report: alive
                news.append(record)
        return news

    def forget(self, sender: PeerId) -> bool:
        """``sender`` disconnected: what it said is no longer heard; True if the candidates may
        have changed (as for :meth:`peers`)."""
        self._vouched.pop(sender, None)
        self._next.pop(sender, None)
        self._gap.pop(sender, None)
        changed = self._set(sender, [])
        self._local.pop(sender, None)
        return changed

    def has_listed(self, sender: PeerId) -> bool:
        """Whether ``sender`` sent a list (what it says stands until it disconnects)."""
        return sender in self._vouched

    def connections_of(self, sender: PeerId) -> set[PeerId]:
        """The peers ``sender`` lists as its own connections (at age 0)."""
        return {p for p, at in self._vouched.get(sender, {}).items() if at is None}

    def connected_to(self, peer_id: PeerId) -> set[PeerId]:
        """The senders that list ``peer_id`` as one of their own connections (at age 0)."""
        return {s for s, vouches in self._vouched.items() if peer_id in vouches
                and vouches[peer_id] is None}  # fmt: skip

    def listed(self) -> Collection[PeerId]:
        """Every peer some sender lists."""
        return self._count.keys()

    def listed_by(self, sender: PeerId) -> Collection[PeerId]:
        """The peers ``sender`` lists (connections and, with relay, every member it relays)."""
        return self._vouched.get(sender, {}).keys()

    def ages(self) -> dict[PeerId, float]:
        """By listed peer not reported gone, seconds since the freshest vouch for it (0: a
        sender is connected to it now)."""
        now = self._clock()
        result: dict[PeerId, float] = {}
        gone = self._gone
        for vouches in self._vouched.values():
            for peer_id, at in vouches.items():
                if peer_id in gone:
                    continue
                age = 0.0 if at is None else max(0.0, now - at)
                if age < result.get(peer_id, MEMBER_TTL + 1):
                    result[peer_id] = age
        return result

    def bury(self, peer_id: PeerId, seq: int) -> bool:
        """``peer_id`` is reported gone as of its record ``seq``: left out until a newer record
        (or :meth:`revive`); False if it was already (or the report is stale: we hold a newer
        record of it)."""
        record = self._records.get(peer_id)
        if peer_id in self._gone or (record is not None and record.seq > seq):
            return False
        if len(self._gone) >= self.total:  # bounded: the oldest tombstone goes first
            del self._gone[next(iter(self._gone))]
        self._gone[peer_id] = (seq, self._clock())
        return True

    def buried(self, peer_id: PeerId) -> int | None:
        """The seq ``peer_id`` was reported gone at (None: not reported, or revived)."""
        tombstone = self._gone.get(peer_id)
        return None if tombstone is None else tombstone[0]

    def buried_all(self) -> list[tuple[PeerId, int]]:
        """Every member held out now, with the seq it was reported gone at."""
        return [(peer_id, seq) for peer_id, (seq, _) in self._gone.items()]

    def revive(self, peer_id: PeerId) -> bool:
        """``peer_id`` shows it is alive (a newer record, a connection to us): no tombstone."""
        return self._gone.pop(peer_id, None) is not None

    def expire(self) -> bool:
        """Drop the hearsay older than ``MEMBER_TTL``, and the tombstones as old (what they
        hold out has aged out by then); True if the candidates may have changed (as for
        :meth:`peers`)."""
        stale_before = self._clock() - MEMBER_TTL
        for peer_id in [p for p, (_, at) in self._gone.items() if at < stale_before]:
            del self._gone[peer_id]
        changed = False
        for sender, vouches in list(self._vouched.items()):
            kept = {p: at for p, at in vouches.items() if at is None or at >= stale_before}
            if len(kept) != len(vouches):
                self._vouched[sender] = kept
                changed |= self._set(sender, list(kept))
        return changed

    def _set(self, sender: PeerId, wanted: list[PeerId]) -> bool:
        """``sender`` lists ``wanted`` now; True if a peer's count went from or to 0 (of all
        senders, or of those on this host: whose loopback addresses are usable)."""
        old = set(self._lists.pop(sender, ()))
        if wanted:
            self._lists[sender] = wanted
        new = set(wanted)
        counts = [self._count, self._local_count] if self._local.get(sender) else [self._count]
        changed = False
        for count in counts:
            for peer_id in new - old:
                count[peer_id] = count.get(peer_id, 0) + 1
                changed |= count[peer_id] == 1
            for peer_id in old - new:
                count[peer_id] -= 1
                if not count[peer_id]:
                    del count[peer_id]
                    changed = True
        for peer_id in new - old:
            self._ids[str(peer_id)] = peer_id
        for peer_id in old - new:
            if peer_id not in self._count:
                self._records.pop(peer_id, None)
                self._candidates.pop(peer_id, None)
                self._ids.pop(str(peer_id), None)
        return changed

    # -- what we make of it -------------------------------------------------------------------

    def record(self, peer_id: PeerId) -> PeerRecord | None:
        return self._records.get(peer_id)

    def candidates(self, direct: Mapping[PeerId, PeerRecord] | None = None) -> list[PeerCandidate]:
        """One candidate per listed peer not reported gone whose record (relayed, or
        ``direct`` if newer) names an address we may dial."""
        local = self._local_count
        result = []
        for peer_id in self._count:
            if peer_id in self._gone:
                continue
            record = self._records.get(peer_id)
            mine = (direct or {}).get(peer_id)
            if mine is not None and mine.newer_than(record):
                record = mine
            if record is None:
                continue
            here = peer_id in local
            made = self._candidates.get(peer_id)
            if made is None or made[0] is not record or made[1] != here:  # made once per record
                hints = usable_hints(record.addresses, sender_on_this_host=here)
                candidate = PeerCandidate(peer_id=peer_id, addresses=hints) if hints else None
                made = self._candidates[peer_id] = (record, here, candidate)
            if made[2] is not None:
                result.append(made[2])
        return result


def usable_hints(addresses: Iterable[Address], *, sender_on_this_host: bool) -> tuple[Address, ...]:
    return tuple(
        a for a in addresses if usable_from_peer(a, sender_on_this_host=sender_on_this_host)
    )


def _remember(reports: dict[PeerId, int], peer_id: PeerId, seq: int) -> None:
    """``reports[peer_id] = seq``, the newest last and at most ``REPORTS_KEPT`` of them."""
    reports.pop(peer_id, None)
    if len(reports) >= REPORTS_KEPT:
        del reports[next(iter(reports))]
    reports[peer_id] = seq


def _gone(peer_id: PeerId, seq: int) -> dict[str, Any]:
    return {"type": GONE, "peer": str(peer_id), "seq": seq}


def _is_number(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


def _peer_id(entry: Any) -> PeerId | None:
    if not isinstance(entry, str) or len(entry) > 64:
        return None
    try:
        return PeerId.parse(entry)
    except InvalidPeerId:
        return None


def _record(entry: Any, wanted: set[PeerId]) -> PeerRecord | None:
    """The record in ``entry`` if it is one of ``wanted``'s and verifies (checked in that order:
    a signature is only worth checking for a peer we would keep)."""
    if not isinstance(entry, str) or len(entry) > _MAX_ENTRY:
        return None
    opened = _opened(entry)
    return _verified(opened[1]) if opened is not None and opened[0] in wanted else None


# the longest base64 a record can be: a longer entry is none, and is not decoded or remembered
# (entries of up to a frame each, 16 KiB, kept 16 MiB in _opened)
_MAX_ENTRY = 4 * math.ceil(MAX_RECORD_BYTES / 3)


@functools.lru_cache(maxsize=1024)
def _opened(entry: str) -> tuple[PeerId, bytes] | None:
    """Whose key a base64 envelope names (not verified) and its bytes; None if it is not one.
    A mesh relays the same records again and again: each is decoded once."""
    try:
        data = base64.b64decode(entry, validate=True)
        return signer(data), data
    except (binascii.Error, ValueError):  # not base64; an envelope that does not parse
        return None


def _verified(data: bytes) -> PeerRecord | None:
    """The record, or None if it does not verify. In a mesh every peer relays the same records
    again and again: :func:`~.records.verify` checks each once (a bad one too)."""
    try:
        return verify(data)
    except RecordError:
        return None


class Links(Protocol):
    """What peer exchange needs of the connection manager."""

    def connected(self) -> Mapping[PeerId, Address]:
        """The peers connected now, with the address in use."""
        ...

    def records(self) -> Mapping[PeerId, PeerRecord]:
        """The signed record of each connected peer."""
        ...

    def update_record(self, record: PeerRecord) -> bool:
        """A connected peer's own newer record; True if it replaced the old one."""
        ...

    async def send(self, peer_id: PeerId, message: dict[str, Any]) -> bool:
        """Send ``message`` to one connected peer; False if that failed."""
        ...

    def suspect(self, peer_id: PeerId, reporter: PeerId) -> None:
        """``reporter`` says connected ``peer_id`` is gone: probe it (dropped only if it does
        not answer)."""
        ...


class PeerExchange:
    """Peer exchange as one more source of the peer table, and the announcements we send.

    What each connected peer said is kept (and forgotten when it disconnects); the peers it
    listed, at the addresses of their newest records, are the table's ``exchange`` set.
    Announcements are coalesced: a burst of connection changes (a mesh forming) makes one send;
    and so are the table's refreshes: a burst of messages makes one (``COALESCE`` later).
    """

    def __init__(
        self,
        me: PeerId,
        table: PeerTable,
        links: Links,
        *,
        per_sender: int,
        total: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = True
        self.relay = False  # list every member known, not only our connections (max_connections)
        self._table = table
        self._links = links
        self._clock = clock
        self._heard = Heard(me, per_sender=per_sender, total=total, clock=clock)
        self._outbox = Outbox(clock)
        self._announcing = False
        # when the round set for the peers told too lately to be told now runs (inf: none is)
        self._deferred_at = math.inf
        self._waiting: set[PeerId] = set()  # those peers (the round looks at them alone)
        self._tg: TaskGroup | None = None  # run()'s: refreshes and replies are its tasks
        self._stale: anyio.Event | None = None  # set when what was heard changed (run() makes it)
        self._resent: dict[PeerId, float] = {}  # by connected peer: our last full list on request
        # the newest record each listed peer showed us in a handshake, kept after its connection
        # ends: with it the peer stays a candidate while others list it (they do not send us the
        # records of our own connections)
        self._direct: dict[PeerId, PeerRecord] = {}
        self.me = me
        # relay: our own record now, and what makes a newer one (to refute a report of our death)
        self.own: Callable[[], PeerRecord] | None = None
        self.refute: Callable[[], object] | None = None
        self._reported: dict[PeerId, int] = {}  # by member: the seq we passed a report on at
        self._probed: dict[PeerId, int] = {}  # by connection: the seq a report made us probe at
        self._refuted_at = -math.inf
        self._refuting = False
        self._report_rates: dict[PeerId, TokenBucket] = {}  # by connected sender

    def listed_ids(self) -> Collection[PeerId]:
        """Every member some connection lists (reported gone or not)."""
        return self._heard.listed()

    def connections_of(self, peer_id: PeerId) -> set[PeerId] | None:
        """The connections ``peer_id`` (connected to us) says it has, but us (None: it has not
        sent its list yet)."""
        return self._heard.connections_of(peer_id) if self._heard.has_listed(peer_id) else None

    def record(self, peer_id: PeerId) -> PeerRecord | None:
        """The newest record of ``peer_id`` that a peer relayed (None if none did)."""
        return self._heard.record(peer_id)

    def received(self, sender: PeerId, sender_address: Address, message: dict[str, Any]) -> bool:
        """A message of the exchange from ``sender``; True if it was one (handled)."""
        kind = message["type"]
        if kind not in ("peers", "records", RESYNC["type"], GONE):
            return False
        if not self.enabled:
            return True
        if kind == RESYNC["type"]:
            self._resend(sender)
            return True
        if kind == GONE:
            self._report(sender, message)
            return True
        if kind == "peers":
            ip = sender_address.ip
            here = ip is not None and ip.is_loopback
            had = self._heard.connections_of(sender)
            if self._heard.peers(sender, message, sender_on_this_host=here):
                self._refresh()
            if had - self._heard.connections_of(sender) and self._tg is not None:
                self.announce(self._tg)  # the records it had from those connections: ours now
            if "records" in message:  # they rode in it: read once its list is known
                self._news(sender, self._heard.take(sender, message["records"]))
        else:
            self._news(sender, self._heard.records(sender, message))
        if self._heard.out_of_step(sender) and self._tg is not None:
            self._tg.start_soon(self._links.send, sender, dict(RESYNC))
        return True

    def _news(self, sender: PeerId, news: list[PeerRecord]) -> None:
        """Records that were news: the sender's own replaces its connection's; any refreshes
        the table (and, relayed, goes on at once: a refutation ends tombstones)."""
        for record in news:
            if record.peer_id == sender:  # its own new record (new metadata)
                self._links.update_record(record)
        if news:
            self._refresh()
            if self.relay and self._tg is not None:
                self.announce(self._tg)

    def _resend(self, peer_id: PeerId) -> None:
        """A peer lost our stream (a gap): our full list and records again, at most once per
        ``RESYNC_EVERY`` (what it asks for is only ever sent to itself)."""
        now = self._clock()
        if now - self._resent.get(peer_id, -RESYNC_EVERY) < RESYNC_EVERY or self._tg is None:
            return
        self._resent[peer_id] = now
        self._outbox.forget(peer_id)
        self.announce(self._tg)

    # -- failure reports (relay) ---------------------------------------------------------------

    def departed(self, peer_id: PeerId, record: PeerRecord | None) -> None:
        """Our connection to ``peer_id`` ended for good (not a trim, not a duplicate): with
        relay, our connections hear that it is gone, as of its newest ``record``."""
        if not (self.enabled and self.relay) or peer_id in self._links.records():
            return
        newest = self._newest(peer_id)
        record = newest if newest is not None and newest.newer_than(record) else record
        if record is not None:
            self._heard.bury(peer_id, record.seq)
            self._pass_on(peer_id, record.seq, exclude=peer_id)

    def joined(self, peer_id: PeerId) -> None:
        """A new connection hears the failure reports we hold (at most ``GONE_BURST`` of them
        are taken), as a connection that was up when each came did: a group of members joined
        to the rest only through the one that failed would otherwise tell no one."""
        if not (self.enabled and self.relay) or self._tg is None:
            return
        for member, seq in self._heard.buried_all()[-int(GONE_BURST) :]:
            if member != peer_id:
                self._tg.start_soon(self._links.send, peer_id, _gone(member, seq))

    def _newest(self, peer_id: PeerId) -> PeerRecord | None:
        relayed, direct = self._heard.record(peer_id), self._direct.get(peer_id)
        return relayed if relayed is not None and relayed.newer_than(direct) else direct

    def _report(self, sender: PeerId, message: dict[str, Any]) -> None:
        """A failure report from a connected peer: believed only about a member we do not hold
        a connection to, and only as of the record we hold of it (a report of a newer one, which
        may not have reached us yet, holds out ours: it cannot hide a record newer than that);
        about us, refuted."""
        bucket = self._report_rates.get(sender)
        if bucket is None:
            bucket = self._report_rates[sender] = TokenBucket(GONE_RATE, GONE_BURST)
        peer_id, seq = _peer_id(message.get("peer")), message.get("seq")
        if not self.relay or peer_id is None or not _is_number(seq) or not bucket.try_take():
            return
        if peer_id == self.me:
            own = self.own() if self.own is not None else None
            if own is not None and seq >= own.seq:
                log.info("peer %s reports this node gone; refuting with a newer record", sender)
                self._refute_soon()
            return
        connected = self._links.records().get(peer_id)
        if connected is not None:  # hearsay is no reason to drop a live connection
            if seq >= connected.seq and self._probed.get(peer_id) != seq:
                self._links.suspect(peer_id, sender)  # our own probe decides
                _remember(self._probed, peer_id, seq)
                if self._tg is not None:  # and it hears it: alive, it refutes
                    self._tg.start_soon(self._links.send, peer_id, _gone(peer_id, seq))
            return
        record = self._newest(peer_id)
        if record is None or seq < record.seq or not self._heard.bury(peer_id, record.seq):
            why = "unknown" if record is None else "stale" if seq < record.seq else "known"
            log.debug("peer %s reports %s gone: %s here, nothing to do", sender, peer_id, why)
            return  # unknown, stale, or held out already: nothing changes, nothing is relayed
        log.debug("peer %s reports %s gone", sender, peer_id)
        self._pass_on(peer_id, seq, exclude=sender)

    def _pass_on(self, peer_id: PeerId, seq: int, *, exclude: PeerId) -> None:
        """Tell our connections (once per member and seq) that ``peer_id`` is gone, and take
        it out of our table and what we relay."""
        self._refresh()
        if self._tg is None or self._reported.get(peer_id) == seq:
            return
        _remember(self._reported, peer_id, seq)
        report = _gone(peer_id, seq)
        for other in self._links.records():
            if other != exclude:
                self._tg.start_soon(self._links.send, other, report)
        self.announce(self._tg)  # our list without it, as a delta

    def _refute_soon(self) -> None:
        """A new record of ours (a higher seq): at once, or ``REFUTE_EVERY`` after the last
        (reports of our death cost a member one signature a while, however many it sends)."""
        if self._refuting or self._tg is None or self.refute is None:
            return
        self._refuting, refute = True, self.refute
        wait = max(0.0, self._refuted_at + REFUTE_EVERY - time.monotonic())

        async def later() -> None:
            await anyio.sleep(wait)
            self._refuting, self._refuted_at = False, time.monotonic()
            refute()

        self._tg.start_soon(later)

    def forget(self, sender: PeerId) -> None:
        """``sender`` disconnected: what it said is no longer heard, what we sent it forgotten."""
        self._outbox.forget(sender)
        self._waiting.discard(sender)
        self._resent.pop(sender, None)
        self._report_rates.pop(sender, None)
        if self._heard.forget(sender):
            self._refresh_now()  # at once: when it is reported gone, so is what it said

    def _refresh(self) -> None:
        """The table's exchange set is out of date: refreshed soon, once for a burst (at once
        when the exchange does not run)."""
        if self._stale is None:
            self._refresh_now()
        else:
            self._stale.set()

    def _refresh_now(self) -> None:
        listed, direct = self._heard.listed(), self._direct
        for peer_id, record in self._links.records().items():
            self._heard.revive(peer_id)  # connected to us: alive, whatever was reported
            if record.newer_than(direct.get(peer_id)):
                direct[peer_id] = record
        for peer_id in [p for p in direct if p not in listed]:
            del direct[peer_id]  # bounded by what is listed
        self._table.replace(SOURCE, self._heard.candidates(direct))

    def listed(self) -> tuple[dict[PeerId, PeerRecord], dict[PeerId, float]]:
        """The records of the peers we list, and their ages: our connections (age 0), and with
        relay every other member still young enough, aged one hop more than we heard it."""
        records = dict(self._links.records())
        ages: dict[PeerId, float] = {}
        if not self.relay:
            return records, ages
        for peer_id, age in self._heard.ages().items():
            record = self._heard.record(peer_id)
            if peer_id in records or record is None or age + HOP_AGE >= MEMBER_TTL:
                continue
            records[peer_id] = record
            ages[peer_id] = age + HOP_AGE
        return records, ages

    def announce(self, tg: TaskGroup, *, again: bool = False) -> None:
        """Tell every connected peer whom we list, soon (one send per burst); ``again``: even
        if the list is unchanged (a refresh of the relayed members' ages). A peer is sent a
        delta at most every ``ANNOUNCE_GAP`` seconds (a forming mesh changes each list many
        times a second: the changes are sent together), its first list at once; with relay a
        delta with a member new to that peer at most every ``NEWS_GAP``."""
        if not self.enabled or self._announcing:
            return
        self._announcing = True

        async def send() -> None:
            await anyio.sleep(JITTER.uniform(*ANNOUNCE_DELAY))
            self._announcing = False
            await self._round(tg, again=again)

        tg.start_soon(send)

    async def _round(
        self, tg: TaskGroup, *, again: bool, only: Collection[PeerId] | None = None
    ) -> None:
        """Send each connected peer what changed (``again``, a refresh: every peer now); the
        peers told too lately wait for a round of their own, which looks at them ``only``
        (the others were told what changed; a change since made a round of its own). With
        relay, news of a member a peer does not list goes after ``NEWS_GAP``: each hop of the
        relay waited up to ``ANNOUNCE_GAP`` for it (100 members, M = 8: 4-5 hops); a delta
        that carries nothing it lacks waits the whole gap, as without relay, where news
        makes a peer dial (a handshake) and a mesh forming is CPU-bound (docs/scaling.md)."""
        listed, ages = self.listed()
        now, later, sooner = self._clock(), math.inf, math.inf  # sooner: a peer with news
        for peer_id in self._links.records():
            if only is not None and peer_id not in only:
                continue
            news = (
                self.relay
                and not again
                and self._outbox.news_for(
                    peer_id, listed, self._has(peer_id).union(self._heard.listed_by(peer_id))
                )
            )
            wait = 0.0 if again else self._outbox.due_in(peer_id, now, news=news)
            if wait > 0:
                later = min(later, wait)
                sooner = min(sooner, wait) if news else sooner
                self._waiting.add(peer_id)
                continue
            self._waiting.discard(peer_id)
            has = self._has(peer_id)
            messages = self._outbox.messages(
                peer_id, listed, ages, again=again, has=has, hold_known=not self.relay
            )
            for message in messages:
                if not await self._links.send(peer_id, message):
                    self._outbox.forget(peer_id)  # it is going; start afresh if it returns
                    break
        at = now + later
        # none set yet, or news due before the one set: this one runs first (without relay,
        # as before, one round at a time for all who wait)
        if later < math.inf and (self._deferred_at == math.inf or now + sooner < self._deferred_at):

            async def deferred() -> None:
                await anyio.sleep(later)
                if self._deferred_at != at:
                    return  # a sooner round ran, and set its own for who still waited
                self._deferred_at = math.inf
                waiting, self._waiting = self._waiting, set()
                await self._round(tg, again=False, only=waiting)

            self._deferred_at = at
            tg.start_soon(deferred)

    def _has(self, peer_id: PeerId) -> set[PeerId]:
        """The connections of connected ``peer_id``, as it says or as they say (whichever list
        came first): their handshakes showed it their records (a forming mesh sent most
        records twice or more)."""
        return self._heard.connections_of(peer_id) | self._heard.connected_to(peer_id)

    async def run(self, tg: TaskGroup) -> None:
        """Refresh the table after each burst of news; and every ``REFRESH`` seconds age out
        members no one vouches for any more, and (relay) tell our connections again how young
        the members we relay are."""
        self._tg, self._stale = tg, anyio.Event()
        tg.start_soon(self._refresher)
        while True:
            await anyio.sleep(REFRESH * JITTER.uniform(0.9, 1.1))
            if self._heard.expire():
                self._refresh()
                self.announce(tg)
            if self.relay:  # again: only hearsay ages are said again; none, nothing is sent
                self.announce(tg, again=True)

    async def _refresher(self) -> None:
        while True:
            assert self._stale is not None
            await self._stale.wait()
            await anyio.sleep(COALESCE)  # what else arrives meanwhile is in the same refresh
            self._stale = anyio.Event()
            self._refresh_now()

    async def publish(self, record: PeerRecord) -> None:
        """Our own new record (new metadata): to every connected peer, at once."""
        for peer_id in self._links.records():
            await self._links.send(peer_id, self._outbox.own(peer_id, record))
