"""Hostile connection lists under ``max_connections``: what members say they are connected to
steers which connections a trim keeps (a peer's only connection, a link out of a closed group)
and the island check, which may dial one member past the limit. A member may lie; what its
word can do is bounded:

- a trim closes exactly the connections past the limit, whatever is said (never more: a liar
  cannot make the node drop its connections), and when a connection shows a link out of the
  group, the group kept is not closed (claims of being alone, which anyone can make, do not
  outrank it);
- the island exception dials one member past the limit (M + 1 at most), only while no dial is
  under way, at most once per ``ISLAND_RETRY`` however long a liar keeps saying "island";
- an island dial to an address that never answers ends at the handshake timeout;
- a peer that closes its connection as a duplicate (saying it kept another, on its way) as
  the trim comes is trimmed all the same: it cannot hold the node past the limit.

The first tests drive the real :class:`Preference` and :class:`Dialer` with what liars say; the
last ones run real nodes and liars over real sessions.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_discovery_core import PeerCandidate
from exo_discovery_core.connections import DUPLICATE, DialError, Opened
from exo_discovery_core.degree import TRIMMED, Preference
from exo_discovery_core.dialer import ISLAND_RETRY, Dialer
from exo_discovery_core.handshake import PROTOCOL
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.node import Node
from exo_discovery_core.peertable import PeerTable
from exo_discovery_core.records import LocalRecord, PeerRecord
from exo_discovery_core.session import Session
from exo_discovery_core.testing import next_event, run_node
from tests.support.clock import Clock
from tests.support.hostile import HOSTILE_NODE, LOOPBACK, Stranger
from tests.support.static import Static

POOL = [Identity.generate().peer_id for _ in range(10)]
ME = Identity.generate().peer_id
SAID = st.sets(st.sampled_from([*POOL, ME]), max_size=6)


@settings(max_examples=500, deadline=None)
@given(
    limit=st.integers(1, 6),
    connected=st.sets(st.sampled_from(POOL), max_size=10),
    said=st.dictionaries(st.sampled_from(POOL), SAID, max_size=10),
)
def test_whatever_connections_say_a_trim_closes_exactly_those_past_the_limit(
    limit: int, connected: set[PeerId], said: dict[PeerId, set[PeerId]]
) -> None:
    prefer = Preference(ME, limit)
    links = {p: s for p, s in said.items() if p in connected}  # only connections are heard
    trimmed = prefer.to_trim(connected, POOL, links)
    assert len(set(trimmed)) == len(trimmed) and set(trimmed) <= connected
    assert len(trimmed) == max(0, len(connected) - limit)  # never more: none dropped for a lie
    kept = connected - set(trimmed)
    link_out = any(p in links and links[p] - {ME} - connected for p in connected)
    if trimmed and link_out:  # a peer that said nothing shows no link out
        shown = any(links.get(p, set()) - {ME, *kept} for p in kept)
        assert shown, "a link out was trimmed and the group kept shows none"


def test_members_all_claiming_to_be_alone_do_not_outrank_the_one_link_out() -> None:
    """M liars each say their only connection is us (so each would be "kept first"): the trim
    still keeps the one connection that shows a link out of the group."""
    prefer = Preference(ME, 4)
    liars, honest = POOL[:4], POOL[4]
    links = {p: set[PeerId]() for p in liars} | {honest: {POOL[7], POOL[8]}}
    trimmed = prefer.to_trim([*liars, honest], POOL, links)
    assert len(trimmed) == 1 and trimmed[0] in liars
    del links[liars[0]]  # one of them says nothing at all: it shows no link out either
    trimmed = prefer.to_trim([*liars, honest], POOL, links)
    assert len(trimmed) == 1 and trimmed[0] in liars
    # members connected to each other and all to us, one silent yet: one of them is kept,
    # for its links to the others (trimmed by us, still its own) lead out of what we keep
    members = POOL[4:7]
    links = {p: set[PeerId]() for p in liars} | {p: set(members) - {p} for p in members[:2]}
    trimmed = prefer.to_trim([*liars, *members], POOL, links)
    assert len(trimmed) == 3 and set(members) - set(trimmed)


class Liars:
    """The node's connections are M liars saying "island" forever; each member dialed out of
    it connects, and is trimmed at once (or its dial hangs, with ``hang``)."""

    def __init__(self, limit: int, *, hang: bool = False) -> None:
        self.current: dict[PeerId, Address] = {
            p: Address(host=LOOPBACK, port=1) for p in POOL[:limit]
        }
        self.hang = hang
        self.dialed: list[PeerId] = []
        self.most = len(self.current)

    def connected(self) -> dict[PeerId, Address]:
        return self.current

    async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
        assert expected is not None
        self.dialed.append(expected)
        if self.hang:
            await anyio.sleep_forever()
        return Opened(expected, address, cast(Session, None), 0.001, cast(PeerRecord, None))

    def adopt(self, opened: Opened) -> None:
        self.current[opened.peer_id] = opened.address
        self.most = max(self.most, len(self.current))

    async def discard(self, opened: Opened) -> None:
        raise AssertionError("one address each: nothing to discard")

    async def verify(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        raise DialError("not discover-only")


def members(count: int) -> PeerTable:
    table = PeerTable(ME)
    others = [Identity.generate().peer_id for _ in range(count)]
    table.replace("exchange", [
        PeerCandidate.at(LOOPBACK, 2000 + i, str(p)) for i, p in enumerate(others)
    ])  # fmt: skip
    return table


@pytest.mark.anyio
async def test_a_liar_saying_island_forever_gets_one_dial_past_the_limit_per_island_retry() -> None:
    limit, clock, links, table = 4, Clock(), Liars(4), members(30)
    dialer = Dialer(ME, table.merged, links, clock=clock, max_connections=limit,
                    island=lambda: True)  # fmt: skip
    span = 120.0
    while clock.now < 1000.0 + span:
        due, _ = dialer.due()
        assert len(due) <= 1, "more than one dial past the limit at once"
        for peer, addresses in due:
            await dialer.attempt(peer, addresses)
            assert peer.peer_id is not None
            links.current.pop(peer.peer_id)  # the trim takes it again (it showed no link out)
            dialer.peer_down(peer.peer_id, TRIMMED)
        clock.now += 0.25
    assert links.most <= limit + 1
    assert 1 <= len(links.dialed) <= 1 + span / ISLAND_RETRY


@pytest.mark.anyio
async def test_an_island_dial_under_way_is_the_only_one() -> None:
    """While the one dial past the limit hangs, no other is made, however long it takes (the
    dial itself ends at the connect and handshake timeouts: the real-node test below)."""
    clock, links, table = Clock(), Liars(4, hang=True), members(30)
    dialer = Dialer(ME, table.merged, links, clock=clock, max_connections=4, island=lambda: True)
    async with anyio.create_task_group() as tg:
        (peer, addresses), = dialer.due()[0]  # fmt: skip
        tg.start_soon(dialer.attempt, peer, addresses)
        for _ in range(100):
            clock.now += ISLAND_RETRY
            assert dialer.due()[0] == []
        tg.cancel_scope.cancel()
    assert len(links.dialed) == 1


# -- real nodes, real sessions ---------------------------------------------------------------

LIMIT = 4  # max_connections of the node under test: it dials up to 3, the island one to 5


async def lie(liar: Stranger, to: Session, listed: Sequence[PeerRecord] = ()) -> None:
    """Say "my only connection is you", and relay ``listed`` as members heard of (age 1 s)."""
    ids = [str(r.peer_id) for r in listed]
    await liar.send(to, {"type": "peers", "peers": ids, "ages": [1.0] * len(ids)})
    if listed:
        envelopes = [base64.b64encode(r.envelope).decode() for r in listed]
        await liar.send(to, {"type": "records", "records": envelopes})


@asynccontextmanager
async def liars_holding(node: Node, count: int) -> AsyncIterator[list[tuple[Stranger, Session]]]:
    """``count`` liars connected to ``node`` (inbound), kept alive, closed at the end."""
    held = [Stranger() for _ in range(count)]
    try:
        async with anyio.create_task_group() as tg:
            sessions = [(liar, await liar.connect(node.port)) for liar in held]
            for liar in held:
                tg.start_soon(liar.keep_alive)
            with anyio.fail_after(10):
                while len(node.connections.connected()) < count:  # noqa: ASYNC110 - node state
                    await anyio.sleep(0.01)
            try:
                yield sessions
            finally:
                tg.cancel_scope.cancel()
    finally:
        for liar in held:
            await liar.aclose()


class Census:
    """The node's connections as its events tell them: how many came up (of ``members``)."""

    def __init__(self, members: set[str]) -> None:
        self.members = members
        self.up = 0
        self.members_up = 0

    async def follow(self, node: Node) -> None:
        async with node.events() as events:
            async for event in events:
                if event.event == "connected":
                    self.up += 1
                    self.members_up += event.peer_id in self.members


@pytest.mark.anyio
async def test_liars_claiming_to_be_alone_cannot_keep_the_node_on_an_island() -> None:
    """The node's M connections are liars, each saying its only connection is the node, one
    relaying three real members (connected among themselves). The node dials one of them past
    the limit (the members it reaches then dial it too: they have no limit), and every trim
    keeps a member (it shows a link out) over the liars' claims: the node is no island after,
    and a liar that comes back saying the same changes nothing. (Before, the M claims of being
    alone were kept first, every member was trimmed, and the node dialed member after member.)"""
    async with run_node() as x1:
        at_x1 = PeerCandidate.at(LOOPBACK, x1.port, str(x1.peer_id))
        async with (
            run_node({"static": Static(at_x1)}) as x2,
            run_node({"static": Static(at_x1)}) as x3,
        ):
            members = {str(x.peer_id) for x in (x1, x2, x3)}
            with anyio.fail_after(15):  # a mesh of three, each listing the other two
                while any(len(x.connections.connected()) < 2 for x in (x1, x2, x3)):  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            settings = {**HOSTILE_NODE, "max_connections": LIMIT}
            async with run_node(node=settings) as node, anyio.create_task_group() as tg:
                census = Census(members)

                async def settled() -> None:
                    """After a trim: within the limit again, a member kept, no island."""
                    await next_event(events, "disconnected", timeout=10, reason=TRIMMED)
                    with anyio.fail_after(10):
                        while len(node.connections.connected()) > LIMIT:  # noqa: ASYNC110
                            await anyio.sleep(0.01)
                    kept = {str(p) for p in node.connections.connected()}
                    assert kept & members, "every link out was trimmed: an island of liars"
                    assert not node._run.island()

                async with liars_holding(node, LIMIT) as liars, node.events() as events:
                    tg.start_soon(census.follow, node)
                    for liar, to in liars[1:]:
                        await lie(liar, to)
                    await lie(*liars[0], [x.record for x in (x1, x2, x3)])
                    dialed = await next_event(events, "connected", timeout=15)
                    assert dialed.peer_id in members, "the dial past the limit is to a member"
                    await settled()
                    comeback = Stranger()  # a liar comes back, saying the same
                    await lie(comeback, await comeback.connect(node.port))
                    await settled()
                    await comeback.aclose()
                    assert census.members_up <= len(members), "a member dialed again"
                tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_an_island_dial_to_a_tarpit_ends_at_the_handshake_timeout() -> None:
    """A liar relays a member of its own making whose record points at a tarpit (it accepts,
    then says nothing): the node's one dial past the limit ends at ``handshake_timeout``, and
    its connections are the liars' as before."""
    held: list[anyio.abc.SocketStream] = []
    tarpit = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=0)
    port = int(tarpit.extra(anyio.abc.SocketAttribute.local_port))

    async def hold(stream: anyio.abc.SocketStream) -> None:
        held.append(stream)
        await anyio.sleep_forever()

    sybil = Identity.generate()
    address = Address(host=LOOPBACK, port=port)
    record = LocalRecord(sybil, None, protocol=PROTOCOL, addresses=[address], meta={})
    settings: dict[str, Any] = {**HOSTILE_NODE, "max_connections": LIMIT, "handshake_timeout": 2.0}
    async with anyio.create_task_group() as outer:
        outer.start_soon(tarpit.serve, hold)
        async with run_node(node=settings) as node, liars_holding(node, LIMIT) as liars:
            for liar, to in liars[1:]:
                await lie(liar, to)
            started = anyio.current_time()
            await lie(*liars[0], [record.record])
            key = str(sybil.peer_id)
            reason = None
            with anyio.fail_after(20):  # the dial ends (with its reason) well before
                while reason is None:
                    status = node._run.dialer.status().get(key)
                    reason = status.last_reason if status is not None else None
                    await anyio.sleep(0.05)
            assert reason is not None and "no handshake within 2 s" in reason
            assert 1 <= len(held) <= 1 + (anyio.current_time() - started) // ISLAND_RETRY
            assert len(node.connections.connected()) == LIMIT
        outer.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await tarpit.aclose()


@pytest.mark.anyio
async def test_a_peer_between_two_connections_cannot_keep_the_node_past_the_limit() -> None:
    """The least-preferred of M connected peers closes its connection saying "duplicate" (the
    node then keeps it reported connected for handshake_timeout, waiting for the connection
    the peer says it kept), and one peer more connects: the trim reports the first one down
    at once, and when it connects again that is a new connection, trimmed again. Before, the
    trim closed nothing (no connection was there), the peer stayed reported, its next
    connection came as no new one, so no trim followed: the node stayed past the limit for
    good (the twelve-node test in tests/test_bounded_degree_e2e.py saw it once at load 30)."""
    settings = {**HOSTILE_NODE, "max_connections": LIMIT, "handshake_timeout": 60.0}
    strangers = {s.identity.peer_id: s for s in (Stranger() for _ in range(LIMIT + 1))}
    async with run_node(node=settings) as node, anyio.create_task_group() as tg:
        ranked = Preference(node.peer_id, LIMIT).ranked(strangers)
        victim, newcomer = ranked[-1], ranked[0]  # the trim's choice; any other one
        connections = node.connections

        async def until(holds: Callable[[], bool], what: str) -> None:
            deadline = anyio.current_time() + 10
            while not holds():  # the node's own state: no event says it
                assert anyio.current_time() < deadline, f"not within 10 s: {what}"
                await anyio.sleep(0.01)

        async with node.events() as events:
            sessions = {p: await strangers[p].connect(node.port) for p in ranked[1:]}
            for stranger in strangers.values():
                tg.start_soon(stranger.keep_alive)
            await until(lambda: len(connections.connected()) == LIMIT, "M connected")
            await strangers[victim].send(sessions[victim], {"type": "bye", "reason": DUPLICATE})
            await until(lambda: victim not in connections.records(), "the duplicate closed")
            assert victim in connections.connected(), "reported while its other one comes"
            await strangers[newcomer].connect(node.port)  # M + 1: a trim, 1 s on
            trimmed = await next_event(events, "disconnected", timeout=10, peer_id=str(victim))
            assert trimmed.reason == TRIMMED
            assert len(connections.connected()) == LIMIT
            await strangers[victim].connect(node.port)  # the one it "kept": a new connection
            await next_event(events, "connected", timeout=10, peer_id=str(victim))
            again = await next_event(events, "disconnected", timeout=10, peer_id=str(victim))
            assert again.reason == TRIMMED
            assert len(connections.connected()) == LIMIT
        tg.cancel_scope.cancel()
    for stranger in strangers.values():
        await stranger.aclose()
