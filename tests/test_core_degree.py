"""Bounded degree: the node's order of preference, and how relayed members age out."""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from typing import cast

import pytest

from exo_discovery_core import PeerCandidate
from exo_discovery_core.connections import DialError, Opened, closed_by_peer
from exo_discovery_core.degree import TRIMMED, Preference, _digest, ring_neighbours
from exo_discovery_core.dialer import IDLE_WAKE, ISLAND_RETRY, REFUSED_RETRY, Dialer
from exo_discovery_core.exchange import HOP_AGE, MEMBER_TTL, Heard
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.peertable import PeerTable
from exo_discovery_core.records import PeerRecord
from exo_discovery_core.session import Session
from tests.support.clock import Clock

IDS = [Identity.generate().peer_id for _ in range(20)]
ME, OTHERS = IDS[0], IDS[1:]


def test_the_ring_neighbours_then_the_closest_by_xor_come_first_then_a_fixed_random_rest() -> None:
    prefer = Preference(ME, 8)
    ranked = prefer.ranked([*OTHERS, ME])
    assert sorted(ranked, key=str) == sorted(OTHERS, key=str)  # never itself
    ring = sorted(IDS)
    at = ring.index(ME)
    neighbours = [ring[(at + 1) % len(ring)], ring[at - 1]]
    assert ranked[:2] == neighbours  # the ids next to ours, after and before
    distance = {p: _digest(str(p)) ^ _digest(str(ME)) for p in OTHERS if p not in neighbours}
    closest = sorted(distance, key=distance.__getitem__)[: math.ceil(8 / 2) - 2]
    assert ranked[2:4] == closest
    assert prefer.ranked(reversed(OTHERS)) == ranked  # an order, not an accident of input
    assert Preference(IDS[1], 8).ranked(IDS) != ranked  # each node has its own


def test_the_ring_neighbours_wrap_round_and_take_no_more_than_the_structured_part() -> None:
    ring = sorted(IDS)
    assert ring_neighbours(ring[0], ring[1:]) == [ring[1], ring[-1]]
    assert ring_neighbours(ring[-1], ring[:-1]) == [ring[0], ring[-2]]
    assert ring_neighbours(ring[0], ring[1:2]) == [ring[1]]  # one peer: after and before us
    assert ring_neighbours(ring[0], []) == []
    assert Preference(ring[5], 1).ranked(ring)[:1] == [ring[6]]  # M = 1: the successor alone


def test_with_every_node_keeping_its_ring_neighbours_the_connections_hold_the_ring() -> None:
    """Each node's liveness heartbeats the next id among its connections: with the ring in the
    graph that is the next member, so every node is heartbeated from below (but the lowest)."""
    members = sorted(IDS)
    kept = {me: set(Preference(me, 4).ranked(members)[:4]) for me in members}
    for i, me in enumerate(members):
        successor = members[(i + 1) % len(members)]
        assert successor in kept[me] and me in kept[successor]
        assert min((p for p in kept[me] if p > me), default=min(kept[me])) == successor


def test_past_the_limit_the_least_preferred_connections_are_trimmed() -> None:
    prefer = Preference(ME, 3)
    ranked = prefer.ranked(OTHERS)
    assert prefer.to_trim(ranked[:3], OTHERS) == []
    connected = ranked[1:6]
    assert prefer.to_trim(connected, OTHERS) == [ranked[5], ranked[4]]
    # a peer whose only connection we are is kept: trimmed, it would be cut off
    links = {p: {ME, ranked[10]} for p in connected} | {ranked[5]: {ME}}
    assert prefer.to_trim(connected, OTHERS, links) == [ranked[4], ranked[3]]


def test_the_trim_keeps_a_link_out_of_a_group_that_would_be_cut_off() -> None:
    prefer = Preference(ME, 3)
    r = prefer.ranked(OTHERS)
    group = {ME, r[0], r[1], r[2]}  # connected only among themselves, each at the limit
    links = {r[0]: group - {r[0]}, r[1]: group - {r[1]}, r[2]: group - {r[2]}, r[3]: {ME, r[9]}}
    assert prefer.to_trim(r[:4], OTHERS, links) == [r[2]]  # not r[3], the one link out
    links[r[3]] = {ME}  # r[3] knows no one else: nothing to gain, the ranking decides
    assert prefer.to_trim(r[:4], OTHERS, links) == [r[2]]  # (r[3] is alone: kept first)
    links[r[3]] = {ME, r[0]}
    assert prefer.to_trim(r[:4], OTHERS, links) == [r[3]]


def peers(ids: list[PeerId], ages: list[float] | None = None) -> dict[str, object]:
    message: dict[str, object] = {"type": "peers", "peers": [str(p) for p in ids]}
    if ages is not None:
        message["ages"] = ages
    return message


def test_a_connection_listing_stands_and_hearsay_ages_out_after_the_ttl() -> None:
    clock = Clock()
    heard = Heard(ME, per_sender=64, total=256, clock=clock)
    a, b, x, y = OTHERS[:4]
    heard.peers(a, peers([x]), sender_on_this_host=True)  # a is connected to x
    heard.peers(b, peers([y], [2.0]), sender_on_this_host=True)  # b heard of y 2 s ago
    clock.now += MEMBER_TTL - 2.5
    assert not heard.expire()
    assert heard.ages() == {x: 0.0, y: MEMBER_TTL - 0.5}
    clock.now += 1.0
    assert heard.expire()  # y: 2 + 8.5 s without a vouch, gone; x stands while a lists it
    assert heard.ages() == {x: 0.0}


def test_two_relays_vouching_for_each_other_do_not_keep_a_gone_member_alive() -> None:
    """A loop (a hears x from b, b from a) only adds age: no count to infinity."""
    clock = Clock()
    on_a = Heard(OTHERS[0], per_sender=64, total=256, clock=clock)
    on_b = Heard(OTHERS[1], per_sender=64, total=256, clock=clock)
    a, b, x = OTHERS[0], OTHERS[1], OTHERS[2]
    on_a.peers(ME, peers([x]), sender_on_this_host=True)  # ME is connected to x, tells a
    on_b.peers(a, peers([x], [HOP_AGE]), sender_on_this_host=True)
    on_a.peers(ME, peers([]), sender_on_this_host=True)  # x is gone: ME stops listing it
    rounds = 0
    while True:
        rounds += 1
        clock.now += 1.0
        on_a.expire()
        on_b.expire()
        ages_b = on_b.ages()
        if x in ages_b:
            on_a.peers(b, peers([x], [ages_b[x] + HOP_AGE]), sender_on_this_host=True)
        ages_a = on_a.ages()
        if x in ages_a:
            on_b.peers(a, peers([x], [ages_a[x] + HOP_AGE]), sender_on_this_host=True)
        if x not in on_a.ages() and x not in on_b.ages():
            break
        assert rounds <= MEMBER_TTL + 2, "x kept alive by the loop"


def test_ages_that_are_not_numbers_in_range_drop_their_entries_only() -> None:
    heard = Heard(ME, per_sender=64, total=256, clock=Clock())
    a, x, y, z, w = OTHERS[:5]
    ages: list[object] = [-1, MEMBER_TTL, "0", 0.5]
    heard.peers(a, {"type": "peers", "peers": [str(p) for p in (x, y, z, w)], "ages": ages},
                sender_on_this_host=True)  # fmt: skip
    assert set(heard.ages()) == {w}
    heard.peers(a, peers([x, y], [0.5]), sender_on_this_host=True)  # not one each: connections
    assert heard.ages() == {x: 0.0, y: 0.0}


def test_below_four_a_node_dials_up_to_the_limit_itself() -> None:
    """With M = 3 two dials of its own each split 12 members into groups (the e2e test did)."""
    assert [Preference(ME, m).dial_to for m in (1, 2, 3, 4, 8)] == [1, 2, 3, 3, 7]


class Links:
    """The dialer's connections: a dial reaches its peer at once (but the ``unreachable``)."""

    def __init__(self, unreachable: Collection[PeerId] = ()) -> None:
        self.current: dict[PeerId, Address] = {}
        self.unreachable = set(unreachable)

    def connected(self) -> dict[PeerId, Address]:
        return self.current

    async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
        assert expected is not None
        if expected in self.unreachable:
            raise DialError("connection refused")
        return Opened(expected, address, cast(Session, None), 0.001, cast(PeerRecord, None))

    def adopt(self, opened: Opened) -> None:
        self.current[opened.peer_id] = opened.address

    async def discard(self, opened: Opened) -> None:
        raise AssertionError("one address each: nothing to discard")

    async def verify(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        raise AssertionError("not discover-only")


def _dialer(links: Links, clock: Clock, limit: int, peers: list[PeerId] = OTHERS) -> Dialer:
    table = PeerTable(ME)
    table.replace("exchange", [
        PeerCandidate.at("127.0.0.1", 1000 + i, str(p)) for i, p in enumerate(peers)
    ])  # fmt: skip
    return Dialer(ME, table.merged, links, clock=clock, max_connections=limit)


@pytest.mark.anyio
async def test_with_a_limit_the_dialer_dials_up_to_one_below_it_most_preferred_first() -> None:
    clock, links = Clock(), Links()
    dialer = _dialer(links, clock, 4)
    ranked = Preference(ME, 4).ranked(OTHERS)
    due, _ = dialer.due()
    assert [p.peer_id for p, _ in due] == ranked[:3]  # M - 1: the last one left for inbound
    for peer, addresses in due:
        await dialer.attempt(peer, addresses)
    assert dialer.due()[0] == []  # dialed all it dials
    links.current[ranked[5]] = Address(host="127.0.0.1", port=1005)  # an inbound fills the last one
    assert dialer.due()[0] == []
    del links.current[ranked[5]]
    kept = ranked[:3]
    del links.current[kept[0]]
    dialer.peer_down(kept[0], f"peer closed ({TRIMMED})")  # trimmed by it: held off, another
    assert dialer.status()[str(kept[0])].retry_in == REFUSED_RETRY
    assert [p.peer_id for p, _ in dialer.due()[0]] == [ranked[3]]
    for peer_id in list(links.current):  # the members it kept go away: isolated, it takes
        del links.current[peer_id]  # the way back in that the trimming peer held off
        dialer.peer_down(peer_id, "connection lost")
    assert dialer.status()[str(kept[0])].retry_in == 0.0


@pytest.mark.anyio
async def test_at_its_limit_the_dialer_sleeps_through_the_waits_of_peers_it_could_not_dial() -> (
    None
):
    """A member not connected whose wait runs out could not be dialed while the limit leaves no
    room: the loop does not wake for it (at rest each such wait was a look at every member),
    only once there is room again, which a connection that ends makes (and wakes it)."""
    ranked = Preference(ME, 4).ranked(OTHERS)
    clock, links = Clock(), Links(unreachable=[ranked[0]])
    dialer = _dialer(links, clock, 4)
    for peer, addresses in dialer.due()[0]:
        await dialer.attempt(peer, addresses)  # the first one fails: tried again in 0.25 s
    links.current[ranked[5]] = Address(host="127.0.0.1", port=1005)  # an inbound: no room left
    assert set(links.current) == {*ranked[1:3], ranked[5]}
    retry = dialer.status()[str(ranked[0])].retry_in
    assert retry is not None and 0 < retry < 1
    assert dialer.due() == ([], IDLE_WAKE), "not woken when its wait runs out: no room for it"
    clock.now += 1.0
    assert dialer.due() == ([], IDLE_WAKE)
    del links.current[ranked[5]]
    dialer.peer_down(ranked[5], "connection lost")  # room again (and the loop is woken)
    links.unreachable.clear()
    assert [p.peer_id for p, _ in dialer.due()[0]] == [ranked[0]], "dialed again first"


@pytest.mark.anyio
async def test_with_room_and_all_members_holding_it_off_a_node_dials_one_per_island_retry() -> None:
    """Each member the node dials trims it (it ranks last everywhere), until every member holds
    it off for REFUSED_RETRY: with room left, it dials one of them each ISLAND_RETRY, not
    only when the holds end. (12 members with M = 3 split into groups of 5 and 7 for 14 s so:
    the three members with room held off by all the others.)"""
    members = OTHERS[:6]
    clock, links = Clock(), Links()
    dialer = _dialer(links, clock, 3, members)
    kept = members[0]
    links.current[kept] = Address(host="127.0.0.1", port=999)  # its one connection left

    async def dial_and_be_trimmed() -> list[PeerId]:
        due, _ = dialer.due()
        for peer, addresses in due:
            await dialer.attempt(peer, addresses)
            assert peer.peer_id is not None
            del links.current[peer.peer_id]
            dialer.peer_down(peer.peer_id, closed_by_peer(TRIMMED))
        return [peer.peer_id for peer, _ in due if peer.peer_id is not None]

    trimmed_by: list[PeerId] = []
    while len(set(trimmed_by)) < len(members) - 1:  # each of the others, dialed, trims it
        dialed = await dial_and_be_trimmed()
        assert dialed, "no dial while some were not dialed yet"
        trimmed_by += dialed
    assert all(dialer.status()[str(p)].retry_in > 0 for p in members[1:])
    presses: list[float] = []
    started = clock.now
    while clock.now < started + REFUSED_RETRY - 1:  # every hold still running
        if dialed := await dial_and_be_trimmed():
            assert len(dialed) == 1 and dialed[0] in members[1:]
            presses.append(clock.now)
        clock.now += 0.25
    assert presses, "no dial until the holds ran out"
    assert presses[0] == started
    assert all(b - a >= ISLAND_RETRY for a, b in itertools.pairwise(presses))


@pytest.mark.anyio
async def test_a_member_that_trimmed_us_is_held_off_though_we_never_dialed_it() -> None:
    """A member that dialed us (so we had no dial state for it), or one whose table entry went
    (what it said went with its connection), is held off after it trims us as one we dialed
    and kept in the table is: before, it was dialed as soon as it was heard of again, and
    trimmed us again (a member the node of the hostile island test trimmed dialed it back in 1 s)."""
    clock, links, table = Clock(), Links(), PeerTable(ME)
    inbound, dialed, kept = OTHERS[:3]

    def listed(*ids: PeerId) -> None:
        at = [PeerCandidate.at("127.0.0.1", 1000 + OTHERS.index(p), str(p)) for p in ids]
        table.replace("static", at)

    dialer = Dialer(ME, table.merged, links, clock=clock)  # no limit of its own
    links.current = {p: Address(host="127.0.0.1", port=1) for p in (inbound, kept)}  # inbound
    listed(inbound, dialed, kept)
    due, _ = dialer.due()
    assert [p.peer_id for p, _ in due] == [dialed]
    await dialer.attempt(*due[0])
    for peer_id in (inbound, dialed):  # both trim us; ``kept`` stays
        del links.current[peer_id]
        dialer.peer_down(peer_id, closed_by_peer(TRIMMED))
    listed(kept)  # their entries go (no one lists them now) ...
    assert dialer.due()[0] == []
    clock.now += 1.0
    listed(inbound, dialed, kept)  # ... and come back, relayed by another member
    assert dialer.due()[0] == [], "dialed again while it holds us off"
    clock.now += REFUSED_RETRY
    assert {p.peer_id for p, _ in dialer.due()[0]} == {inbound, dialed}
