"""The dialer without sockets: whom it dials, in which order, the backoff and the reasons kept."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import anyio
import pytest

from exo_discovery_core import Address, PeerCandidate
from exo_discovery_core.connections import DialedSelf, DialError
from exo_discovery_core.dialer import (
    MAX_REASON,
    MUTUAL_SECOND_DIAL,
    REFUSED_RETRY,
    REVERIFY_EVERY,
    Dialer,
)
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.peertable import Peer, PeerTable

pytestmark = pytest.mark.anyio

ME = Identity.generate().peer_id


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Links:
    """What the dialer sees of the connection manager: who is connected, and a dial."""

    def __init__(self, outcomes: Mapping[Address, PeerId | DialError]) -> None:
        self.outcomes = dict(outcomes)
        self.current: dict[PeerId, Address] = {}
        self.dialed: list[Address] = []

    def connected(self) -> Mapping[PeerId, Address]:
        return self.current

    async def dial(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
        self.dialed.append(address)
        outcome = self.outcomes[address]
        if isinstance(outcome, DialError):
            raise outcome
        self.current[outcome] = address
        return outcome


def address(port: int, host: str = "127.0.0.1") -> Address:
    return Address(host=host, port=port)


def make(table: PeerTable, links: Links, clock: Clock) -> Dialer:
    return Dialer(ME, table.merged, links, redial_max=8.0, clock=clock)


async def dial_due(dialer: Dialer) -> list[Peer]:
    due, _ = dialer.due()
    for peer in due:
        await dialer.attempt(peer)
    return due


async def test_a_known_peer_is_dialed_once_and_not_again_while_connected() -> None:
    peer = Identity.generate().peer_id
    table, links, clock = PeerTable(ME), Links({address(1): peer}), Clock()
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
    links, clock = Links({address(1): refused, address(2): other}), Clock()
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
        async def dial(self, address: Address, expected: PeerId | None, timeout: float) -> PeerId:
            raise RuntimeError()

    table, clock = PeerTable(ME), Clock()
    table.replace("static", [PeerCandidate(addresses=(address(1),))])
    dialer = make(table, Broken({}), clock)
    await dial_due(dialer)
    assert dialer.status()["127.0.0.1:1"].last_reason == "127.0.0.1:1: unexpected RuntimeError: "


async def test_addresses_are_tried_in_route_order_until_one_answers() -> None:
    peer = Identity.generate().peer_id
    table, clock = PeerTable(ME), Clock()
    lan, loopback, other = address(1, "10.0.0.1"), address(1), address(2, "10.0.0.2")
    links = Links({loopback: DialError("timed out"), lan: peer, other: peer})
    table.replace("static", [PeerCandidate(peer_id=peer, addresses=(lan, other, loopback))])

    def loopback_first(addresses: Iterable[Address]) -> list[Address]:
        return sorted(addresses, key=lambda a: a != loopback)

    dialer = Dialer(ME, table.merged, links, order=loopback_first, clock=clock)
    await dial_due(dialer)
    assert links.dialed == [loopback, lan]


async def test_dialing_ourselves_stops_at_that_address() -> None:
    table, clock = PeerTable(ME), Clock()
    links = Links({address(1): DialedSelf("this is this node's own address")})
    table.replace("static", [PeerCandidate(addresses=(address(1), address(2)))])
    dialer = make(table, links, clock)
    await dial_due(dialer)
    assert links.dialed == [address(1)]
    table.learn(address(1), ME)  # what the connection manager reports: the table drops it
    assert dialer.due() == ([], 1.0) and dialer.status() == {}


async def test_of_two_peers_that_know_each_other_by_exchange_the_lower_id_dials_first() -> None:
    lower, higher = sorted([Identity.generate().peer_id for _ in range(2)])
    for me, other, first_at in ((lower, higher, 0.0), (higher, lower, MUTUAL_SECOND_DIAL)):
        table, links, clock = PeerTable(me), Links({address(1): other}), Clock()
        table.replace("exchange", [PeerCandidate.at("127.0.0.1", 1, str(other))])
        dialer = Dialer(me, table.merged, links, clock=clock)
        due, _ = dialer.due()
        assert bool(due) == (first_at == 0.0)
        assert dialer.status()[str(other)].retry_in == first_at


async def test_a_peer_that_went_down_is_dialed_again_at_once() -> None:
    peer = Identity.generate().peer_id
    table, links, clock = PeerTable(ME), Links({address(1): peer}), Clock()
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
        with anyio.fail_after(2):
            while not links.current:  # noqa: ASYNC110 - the fake dial is all there is to see
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert links.dialed == [address(1)]


async def test_a_reason_from_the_peer_reaches_no_terminal_raw_and_is_bounded() -> None:
    table, clock = PeerTable(ME), Clock()
    hostile = DialError("peer refused us: \x1b[2J\x1b]0;owned\x07" + "x" * 5000, refused=True)
    table.replace("static", [PeerCandidate(addresses=(address(1),))])
    dialer = make(table, Links({address(1): hostile}), clock)
    await dial_due(dialer)
    reason = dialer.status()["127.0.0.1:1"].last_reason or ""
    assert reason.startswith(r"127.0.0.1:1: peer refused us: \x1b[2J\x1b]0;owned\x07xxx")
    assert all(c.isprintable() for c in reason) and len(reason) <= MAX_REASON


async def test_a_peer_that_refused_us_at_every_address_is_not_pressed() -> None:
    table, clock = PeerTable(ME), Clock()
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
    table, links, clock = PeerTable(ME), Verifier({address(1): peer}), Clock()
    table.replace("static", [PeerCandidate.at("127.0.0.1", 1, str(peer))])
    dialer = Dialer(ME, table.merged, links, redial_max=8.0, clock=clock, verify_only=True)
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]
    assert links.current == {}  # nothing kept
    clock.now += REVERIFY_EVERY - 1
    assert await dial_due(dialer) == []
    clock.now += 2
    assert [p.peer_id for p in await dial_due(dialer)] == [peer]  # a record may have changed
    assert links.dialed == [address(1), address(1)]
