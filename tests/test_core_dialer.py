"""The dialer without sockets: whom it dials, in which order, the backoff and the reasons kept."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import cast

import anyio
import pytest

from exo_discovery_core import Address, PeerCandidate
from exo_discovery_core.connections import DialedSelf, DialError, Opened
from exo_discovery_core.dialer import (
    ARRIVING_WAIT,
    IDLE_WAKE,
    MAX_REASON,
    MUTUAL_SECOND_DIAL,
    REFUSED_RETRY,
    REVERIFY_EVERY,
    Dialer,
    first_dialer,
)
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.ip import LocalNetworks
from exo_discovery_core.links import LinkClass, LinkMap
from exo_discovery_core.peertable import Peer, PeerTable
from exo_discovery_core.records import PeerRecord
from exo_discovery_core.routes import Paths
from exo_discovery_core.session import Session
from tests.support.clock import Clock

pytestmark = pytest.mark.anyio

ME = Identity.generate().peer_id


class Links:
    """What the dialer sees of the connection manager: who is connected, and a dial."""

    def __init__(self, outcomes: Mapping[Address, PeerId | DialError]) -> None:
        self.outcomes = dict(outcomes)
        self.current: dict[PeerId, Address] = {}
        self.dialed: list[Address] = []
        self.discarded: list[Address] = []

    def connected(self) -> Mapping[PeerId, Address]:
        return self.current

    async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
        self.dialed.append(address)
        outcome = self.outcomes[address]
        if isinstance(outcome, DialError):
            raise outcome
        return Opened(outcome, address, cast(Session, None), 0.001, cast(PeerRecord, None))

    def adopt(self, opened: Opened) -> None:
        self.current[opened.peer_id] = opened.address

    async def discard(self, opened: Opened) -> None:
        self.discarded.append(opened.address)


def _paths(*links: tuple[str, str, LinkClass]) -> Paths:
    """Paths over fake interfaces: (name, address/prefix, class)."""
    entries = [(n, ipaddress.ip_interface(i), c) for n, i, c in links]
    return Paths(LocalNetworks(read=lambda: [e[1] for e in entries]), LinkMap(read=lambda: entries))


def address(port: int, host: str = "127.0.0.1") -> Address:
    return Address(host=host, port=port)


def make(table: PeerTable, links: Links, clock: Clock) -> Dialer:
    return Dialer(ME, table.merged, links, redial_max=8.0, clock=clock)


async def dial_due(dialer: Dialer) -> list[Peer]:
    due, _ = dialer.due()
    for peer, addresses in due:
        await dialer.attempt(peer, addresses)
    return [peer for peer, _ in due]


async def test_a_known_peer_is_dialed_once_and_not_again_while_connected() -> None:
    peer = Identity.generate().peer_id
    table, links, clock = PeerTable(ME), Links({address(1): peer}), Clock(100.0)
    table.replace("static", [PeerCandidate.at("127.0.0.1", 1, str(peer))])
    dialer = make(table, links, clock)
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]
    clock.now += 60
    assert await dial_due(dialer) == []
    assert links.dialed == [address(1)]
    assert dialer.status()[str(peer)].last_reason is None


async def test_a_failed_dial_keeps_a_reason_for_every_address_and_backs_off() -> None:
    table = PeerTable(ME)
    refused = DialError("Connection refused")
    other = DialError("namespace 'blue' is not ours ('exo')", refused=True)  # one refusal of two
    links, clock = Links({address(1): refused, address(2): other}), Clock(100.0)
    table.replace("static", [PeerCandidate(addresses=(address(1), address(2)))])
    dialer = make(table, links, clock)
    await dial_due(dialer)
    [status] = dialer.status().values()
    assert status.last_reason == (
        "127.0.0.1:1: Connection refused; 127.0.0.1:2: namespace 'blue' is not ours ('exo')"
    )
    assert 0 < status.retry_in <= 0.25
    delays = []
    for _ in range(6):
        clock.now += dialer.status()["127.0.0.1:1,127.0.0.1:2"].retry_in
        assert await dial_due(dialer), "due once its delay has passed"
        delays.append(dialer.status()["127.0.0.1:1,127.0.0.1:2"].retry_in)
    assert delays[-1] > delays[0] and max(delays) <= 8.0
    assert await dial_due(dialer) == [], "not due before its delay"


async def test_a_reason_is_never_empty() -> None:
    class Broken(Links):
        async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
            raise RuntimeError()

    table, clock = PeerTable(ME), Clock(100.0)
    table.replace("static", [PeerCandidate(addresses=(address(1),))])
    dialer = make(table, Broken({}), clock)
    await dial_due(dialer)
    assert dialer.status()["127.0.0.1:1"].last_reason == "127.0.0.1:1: unexpected RuntimeError: "


async def test_addresses_are_tried_in_route_order_until_one_answers() -> None:
    peer = Identity.generate().peer_id
    table, clock = PeerTable(ME), Clock(100.0)
    lan, loopback, other = address(1, "10.0.0.1"), address(1), address(2, "10.0.0.2")
    links = Links({loopback: DialError("timed out"), lan: peer, other: peer})
    table.replace("static", [PeerCandidate(peer_id=peer, addresses=(lan, other, loopback))])

    dialer = Dialer(ME, table.merged, links, paths=_paths(), clock=clock)
    await dial_due(dialer)
    assert links.dialed == [loopback, lan]


async def test_dialing_ourselves_stops_at_that_address() -> None:
    table, clock = PeerTable(ME), Clock(100.0)
    links = Links({address(1): DialedSelf("this is this node's own address")})
    table.replace("static", [PeerCandidate(addresses=(address(1), address(2)))])
    dialer = make(table, links, clock)
    await dial_due(dialer)
    assert links.dialed == [address(1)]
    table.learn(address(1), ME)  # what the connection manager reports: the table drops it
    assert dialer.due() == ([], IDLE_WAKE) and dialer.status() == {}


async def test_of_two_peers_that_know_each_other_by_exchange_one_dials_first() -> None:
    a, b = (Identity.generate().peer_id for _ in range(2))
    first = first_dialer(a, b)
    assert first_dialer(b, a) == first, "both ends give the same answer"
    second = b if first == a else a
    for me, other, first_at in ((first, second, 0.0), (second, first, MUTUAL_SECOND_DIAL)):
        table, links, clock = PeerTable(me), Links({address(1): other}), Clock(100.0)
        table.replace("exchange", [PeerCandidate.at("127.0.0.1", 1, str(other))])
        dialer = Dialer(me, table.merged, links, clock=clock)
        due, _ = dialer.due()
        assert bool(due) == (first_at == 0.0)
        assert dialer.status()[str(other)].retry_in == first_at


async def test_a_peer_that_went_down_is_dialed_again_at_once() -> None:
    peer = Identity.generate().peer_id
    table, links, clock = PeerTable(ME), Links({address(1): peer}), Clock(100.0)
    table.replace("static", [PeerCandidate.at("127.0.0.1", 1, str(peer))])
    dialer = make(table, links, clock)
    await dial_due(dialer)
    del links.current[peer]
    dialer.peer_down(peer)
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]


async def test_the_loop_dials_when_woken() -> None:
    peer = Identity.generate().peer_id
    table, links = PeerTable(ME), Links({address(1): peer})
    dialer = Dialer(ME, table.merged, links)
    async with anyio.create_task_group() as tg:
        tg.start_soon(dialer.run, tg)
        table.replace("static", [PeerCandidate.at("127.0.0.1", 1, str(peer))])
        dialer.wake()
        with anyio.fail_after(10):
            while not links.current:  # noqa: ASYNC110 - the fake dial is all there is to see
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert links.dialed == [address(1)]


async def test_a_reason_from_the_peer_reaches_no_terminal_raw_and_is_bounded() -> None:
    table, clock = PeerTable(ME), Clock(100.0)
    hostile = DialError("peer refused us: \x1b[2J\x1b]0;owned\x07" + "x" * 5000, refused=True)
    table.replace("static", [PeerCandidate(addresses=(address(1),))])
    dialer = make(table, Links({address(1): hostile}), clock)
    await dial_due(dialer)
    reason = dialer.status()["127.0.0.1:1"].last_reason or ""
    assert reason.startswith(r"127.0.0.1:1: peer refused us: \x1b[2J\x1b]0;owned\x07xxx")
    assert all(c.isprintable() for c in reason) and len(reason) <= MAX_REASON


async def test_a_peer_that_refused_us_at_every_address_is_not_pressed() -> None:
    table, clock = PeerTable(ME), Clock(100.0)
    other = DialError("namespace 'blue' is not ours ('exo')", refused=True)
    table.replace("static", [PeerCandidate(addresses=(address(1),))])
    dialer = make(table, Links({address(1): other}), clock)
    await dial_due(dialer)
    status = dialer.status()["127.0.0.1:1"]
    assert status.retry_in == REFUSED_RETRY
    assert status.last_reason == (
        "127.0.0.1:1: namespace 'blue' is not ours ('exo') (refused: tried again every 30 s)"
    )


class Verifier(Links):
    """Discover-only links: ``verify`` tells who answers and keeps no connection."""

    async def verify(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        self.dialed.append(address)
        outcome = self.outcomes[address]
        if isinstance(outcome, DialError):
            raise outcome
        return outcome


async def test_verify_only_verifies_once_then_again_after_reverify_every() -> None:
    peer = Identity.generate().peer_id
    table, links, clock = PeerTable(ME), Verifier({address(1): peer}), Clock(100.0)
    table.replace("static", [PeerCandidate.at("127.0.0.1", 1, str(peer))])
    dialer = Dialer(ME, table.merged, links, redial_max=8.0, clock=clock, verify_only=True)
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]
    assert links.current == {}  # nothing kept
    clock.now += REVERIFY_EVERY - 1
    assert await dial_due(dialer) == []
    clock.now += 2
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]  # a record may have changed
    assert links.dialed == [address(1), address(1)]


async def test_a_verified_peer_wakes_the_loop_when_its_reverification_is_due() -> None:
    peer = Identity.generate().peer_id
    table, links, clock = PeerTable(ME), Verifier({address(1): peer}), Clock(100.0)
    table.replace("static", [PeerCandidate.at("127.0.0.1", 1, str(peer))])
    dialer = Dialer(ME, table.merged, links, redial_max=8.0, clock=clock, verify_only=True)
    await dial_due(dialer)
    clock.now += 10
    due, wait = dialer.due()
    assert due == [] and wait == pytest.approx(REVERIFY_EVERY - 10)


async def test_with_every_peer_connected_the_loop_sleeps_until_woken() -> None:
    """At rest nothing is due: no look every second (at 50 members that look was a quarter of
    an idle node's CPU); a change wakes the loop, and IDLE_WAKE is only a safety net."""
    peers = [Identity.generate().peer_id for _ in range(3)]
    table, clock = PeerTable(ME), Clock(100.0)
    links = Links({address(i + 1): p for i, p in enumerate(peers)})
    table.replace("static", [PeerCandidate.at("127.0.0.1", i + 1, str(p))
                             for i, p in enumerate(peers)])  # fmt: skip
    dialer = make(table, links, clock)
    assert len(await dial_due(dialer)) == 3
    due, wait = dialer.due()
    assert due == [] and wait == IDLE_WAKE and IDLE_WAKE >= 30


async def test_a_silent_first_address_does_not_hold_the_dial_up() -> None:
    """Happy Eyeballs: the first address hangs, the second starts after the attempt delay and
    wins; the hanging attempt is cancelled, nothing else is kept."""
    peer = Identity.generate().peer_id
    hang, good = address(1, "10.0.0.1"), address(2, "10.0.0.2")

    class Hanging(Links):
        async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
            if address == hang:
                self.dialed.append(address)
                await anyio.sleep_forever()
            return await super().open(address, expected, timeout)

    table, links = PeerTable(ME), Hanging({good: peer})
    table.replace("static", [PeerCandidate(peer_id=peer, addresses=(hang, good))])
    dialer = Dialer(ME, table.merged, links, paths=_paths(), attempt_delay=0.05)
    with anyio.fail_after(5):
        await dial_due(dialer)
    assert links.dialed == [hang, good]
    assert links.current == {peer: good}


async def test_a_connected_peer_moves_to_a_better_link_when_one_appears() -> None:
    peer = Identity.generate().peer_id
    wifi, cable = address(1, "192.168.1.9"), address(1, "169.254.3.9")
    paths = _paths(
        ("en1", "192.168.1.2/24", LinkClass.WIFI),
        ("bridge0", "169.254.3.2/16", LinkClass.THUNDERBOLT),
    )
    table, clock = PeerTable(ME), Clock(100.0)
    links = Links({wifi: peer, cable: DialError("No route to host")})
    table.replace("static", [PeerCandidate(peer_id=peer, addresses=(wifi,))])
    dialer = Dialer(ME, table.merged, links, paths=paths, clock=clock)
    await dial_due(dialer)
    assert links.current == {peer: wifi}
    assert await dial_due(dialer) == []  # connected, no better path known

    table.replace("static", [PeerCandidate(peer_id=peer, addresses=(wifi, cable))])
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]  # the cable, not yet answering
    assert links.dialed[-1] == cable and links.current == {peer: wifi}
    assert dialer.status()[str(peer)].last_reason is None  # connected: not a dial failure
    assert await dial_due(dialer) == []  # backing off
    clock.now += 60
    links.outcomes[cable] = peer  # the cable is plugged in
    await dial_due(dialer)
    assert links.current == {peer: cable}
    assert await dial_due(dialer) == []  # on the best path: nothing more to do


async def test_a_peer_its_first_handshake_named_is_not_dialed_again_while_it_is_kept() -> None:
    """The handshake tells the table who answered (it re-keys the peer by its id) before the
    connection is kept: in that moment the peer must not look like one to dial."""
    peer = Identity.generate().peer_id
    table, clock = PeerTable(ME), Clock(100.0)

    class Slow(Links):
        adopted: list[PeerId] = []

        async def open(self, address: Address, expected: PeerId | None, timeout: float) -> Opened:
            opened = await super().open(address, expected, timeout)
            table.learn(address, opened.peer_id)  # what the connection manager reports
            return opened

        def adopt(self, opened: Opened) -> None:  # kept later, by a task of its own
            self.adopted.append(opened.peer_id)

    links = Slow({address(1): peer})
    table.replace("static", [PeerCandidate(addresses=(address(1),))])  # no id yet
    dialer = make(table, links, clock)
    await dial_due(dialer)
    assert str(peer) in table.merged()  # re-keyed by its id
    due, wait = dialer.due()
    assert due == [] and wait == pytest.approx(ARRIVING_WAIT)  # being kept: not dialed again,
    assert links.dialed == [address(1)]  # and the loop looks again when the wait is over
    clock.now += 6  # never kept (lost to another connection): dialed again after a while
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]


async def test_a_dial_that_proves_the_peer_gives_its_pace_token_back_a_failed_one_not() -> None:
    """Hearsay dials are paced (burst 2, and no refill to speak of here): 6 real peers are all
    dialed at once, as each dial reached the peer it was told of; of 6 made-up ones (every
    address refuses) only the burst is dialed."""
    from exo_discovery_core.limits import TokenBucket

    me, others = Identity.generate().peer_id, []
    while len(others) < 12:  # peers of which it is the first dialer
        other = Identity.generate().peer_id
        if first_dialer(me, other) == me:
            others.append(other)
    real, fake = others[:6], others[6:]
    outcomes: dict[Address, PeerId | DialError] = {address(i + 1): p for i, p in enumerate(real)}
    outcomes |= {address(i + 101): DialError("connection refused") for i in range(6)}
    for peers, base in ((real, 1), (fake, 101)):
        table, links, clock = PeerTable(me), Links(outcomes), Clock(100.0)
        table.replace("exchange", [
            PeerCandidate.at("127.0.0.1", base + i, str(p)) for i, p in enumerate(peers)
        ])  # fmt: skip
        bucket = TokenBucket(rate=1e-6, burst=2)
        dialer = Dialer(me, table.merged, links, learned=bucket, clock=clock)
        dialed: list[Peer] = []
        for _ in range(len(peers)):  # one due() after each round of dials, as the loop does
            dialed += await dial_due(dialer)
        assert len(dialed) == (len(peers) if peers is real else 2)


def test_each_node_dials_first_about_half_of_its_hearsay_pairs() -> None:
    """Not the lower id of every pair: the lowest ids of a mesh would dial all the others."""
    ids = sorted(PeerId.from_raw_key(bytes([i]) * 32) for i in range(50))  # fixed ids
    firsts = [sum(first_dialer(me, other) == me for other in ids if other != me) for me in ids]
    assert min(firsts) >= 12 and max(firsts) <= 37, firsts
