"""Hostile failure reports (``{"type": "gone", "peer": X, "seq": S}``, relay only).

A report is network input from an authenticated member, so it may lie. What it can do is bounded:
it is believed only about a member the receiver has no connection to, and only as of the very
record the receiver holds of it (a report of an older record, or a malformed one, changes
nothing and is not relayed; one of a newer record holds out only the one held); each (member, seq) is passed on once; a sender's reports are rate-limited; about a peer
the receiver is connected to it only triggers the receiver's own probe (and is passed to that
peer alone, which refutes it); about the receiver itself it is refuted with a newer record, at
most one a ``REFUTE_EVERY``. The first tests drive one :class:`PeerExchange` with a recorded
connection set; the last ones send reports over a real connection to a real node.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from exo_discovery_core import exchange
from exo_discovery_core.exchange import GONE, PeerExchange
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.peertable import PeerTable
from exo_discovery_core.records import LocalRecord, PeerRecord
from tests.support.hostile import LiveNode, Stranger

pytestmark = pytest.mark.anyio
ME = Identity.generate()
SENDER, OTHER, NEAR, FAR = (Identity.generate() for _ in range(4))
AT = Address(host="127.0.0.1", port=5000)


def local(identity: Identity, port: int) -> LocalRecord:
    address = Address(host="127.0.0.1", port=port)
    return LocalRecord(identity, None, protocol="exo-discovery/2", addresses=[address], meta={})


class Links:
    """The connections of the node under test: fixed records, every send and probe recorded."""

    def __init__(self, up: dict[PeerId, PeerRecord]) -> None:
        self.up = up
        self.sent: list[tuple[PeerId, dict[str, Any]]] = []
        self.suspected: list[tuple[PeerId, PeerId]] = []

    def connected(self) -> dict[PeerId, Address]:
        return {p: AT for p in self.up}

    def records(self) -> dict[PeerId, PeerRecord]:
        return dict(self.up)

    def update_record(self, record: PeerRecord) -> bool:
        if record.peer_id in self.up and record.newer_than(self.up[record.peer_id]):
            self.up[record.peer_id] = record
            return True
        return False

    async def send(self, peer_id: PeerId, message: dict[str, Any]) -> bool:
        self.sent.append((peer_id, message))
        return True

    def suspect(self, peer_id: PeerId, reporter: PeerId) -> None:
        self.suspected.append((peer_id, reporter))

    def reports(self) -> list[tuple[PeerId, dict[str, Any]]]:
        return [(p, m) for p, m in self.sent if m["type"] == GONE]


class Setup:
    def __init__(self) -> None:
        self.records = {i.peer_id: local(i, 6000 + n) for n, i in enumerate((SENDER, OTHER, NEAR))}
        self.far = local(FAR, 7000)
        self.me = local(ME, 5999)
        self.links = Links({p: r.record for p, r in self.records.items()})
        self.table = PeerTable(ME.peer_id)
        self.exchange = PeerExchange(ME.peer_id, self.table, self.links, per_sender=64, total=256)
        self.exchange.relay = True
        self.exchange.own = lambda: self.me.record
        self.refuted = 0

        def refute() -> None:
            self.refuted += 1
            self.me.update()

        self.exchange.refute = refute

    def say(self, sender: Identity, message: dict[str, Any]) -> None:
        self.exchange.received(sender.peer_id, AT, message)

    def hear_of_far(self, sender: Identity = SENDER, n: int = 0) -> None:
        """``sender`` relays FAR (hearsay, 1 s old) with FAR's record."""
        self.say(sender, {"type": "peers", "peers": [str(FAR.peer_id)], "ages": [1.0], "n": n})
        envelope = base64.b64encode(self.far.record.envelope).decode()
        self.say(sender, {"type": "records", "records": [envelope], "n": n + 1})
        self.exchange._refresh_now()

    def listed(self) -> bool:
        return self.table.get(FAR.peer_id) is not None


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    made = Setup()
    async with anyio.create_task_group() as tg:
        tg.start_soon(made.exchange.run, tg)
        await anyio.lowlevel.checkpoint()  # run() has started: the exchange's task group is set
        yield made
        tg.cancel_scope.cancel()


def gone(identity: Identity, seq: Any) -> dict[str, Any]:
    return {"type": GONE, "peer": str(identity.peer_id), "seq": seq}


async def settle() -> None:
    await anyio.sleep(0.01)  # the sends the exchange started run


async def test_a_report_about_a_connected_peer_only_makes_the_receiver_probe_it(
    setup: Setup,
) -> None:
    seq = setup.records[NEAR.peer_id].record.seq
    for _ in range(5):
        setup.say(SENDER, gone(NEAR, seq))
    await settle()
    assert setup.links.suspected == [(NEAR.peer_id, SENDER.peer_id)]  # one probe: ours decides
    assert NEAR.peer_id in setup.links.up  # nothing dropped on hearsay
    assert setup.links.reports() == [(NEAR.peer_id, gone(NEAR, seq))]  # told to it alone


async def test_a_report_counts_only_as_of_the_record_held_and_is_passed_on_once(
    setup: Setup,
) -> None:
    setup.hear_of_far()
    assert setup.listed()
    seq = setup.far.record.seq
    for wrong in (seq - 1, 2**53, -1, True, "1", None, 1.5):
        setup.say(SENDER, gone(FAR, wrong))
    for junk in ({"type": GONE}, {"type": GONE, "peer": "not an id", "seq": seq},
                 {"type": GONE, "peer": str(Identity.generate().peer_id), "seq": seq}):  # fmt: skip
        setup.say(SENDER, junk)
    await settle()
    assert setup.listed() and setup.links.reports() == []  # nothing believed, nothing relayed
    for _ in range(3):
        setup.say(SENDER, gone(FAR, seq))
        setup.say(OTHER, gone(FAR, seq))
    await settle()
    setup.exchange._refresh_now()
    assert not setup.listed()
    relayed = setup.links.reports()
    assert sorted(str(p) for p, _ in relayed) == sorted(
        str(p) for p in (OTHER.peer_id, NEAR.peer_id)
    )
    assert all(m == gone(FAR, seq) for _, m in relayed)  # once each, never back to the sender


async def test_stale_hearsay_does_not_bring_a_reported_member_back_a_newer_record_does(
    setup: Setup,
) -> None:
    setup.hear_of_far()
    setup.say(SENDER, gone(FAR, setup.far.record.seq))
    setup.hear_of_far(OTHER)  # another relay still lists it, with the same record
    setup.exchange._refresh_now()
    assert not setup.listed()
    setup.far.update()  # FAR, alive, refuted: its newer record is relayed
    setup.hear_of_far(OTHER, n=2)
    assert setup.listed()


async def test_a_report_about_the_receiver_is_refuted_once_per_its_record(setup: Setup) -> None:
    seq = setup.me.record.seq
    for wrong in (seq - 1, "x", None):
        setup.say(SENDER, gone(ME, wrong))
    await settle()
    assert setup.refuted == 0
    for _ in range(5):
        setup.say(SENDER, gone(ME, seq))
    with anyio.fail_after(5):
        while setup.refuted == 0:  # noqa: ASYNC110 - a counter, no event to wait on
            await anyio.sleep(0.01)
    assert setup.me.record.seq > seq
    setup.say(SENDER, gone(ME, seq))  # the old record: refuted already
    await anyio.sleep(exchange.REFUTE_EVERY + 0.1)
    assert setup.refuted == 1


async def test_a_flood_of_reports_is_rate_limited_per_sender(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "GONE_BURST", 2.0)
    monkeypatch.setattr(exchange, "GONE_RATE", 0.001)
    seq = setup.far.record.seq
    setup.hear_of_far()
    for wrong in range(3):  # believable in form, wrong in seq: they use up the sender's share
        setup.say(SENDER, gone(FAR, seq - 1 - wrong))
    setup.say(SENDER, gone(FAR, seq))
    await settle()
    setup.exchange._refresh_now()
    assert setup.listed()  # the true one came past the sender's share: not taken
    setup.say(OTHER, gone(FAR, seq))  # another sender has its own share
    await settle()
    setup.exchange._refresh_now()
    assert not setup.listed()


def test_a_real_node_probes_a_connected_peer_reported_gone_and_refutes_its_own_report() -> None:
    """Over real connections: member A reports member B, to which the node is connected: the
    node probes B, B answers, and B stays. Junk reports change nothing; a report of the node
    itself, as of its record, makes it sign a newer one."""
    with LiveNode({"max_connections": 8}) as live:
        a, b = Stranger(), Stranger()

        async def run() -> None:
            node = live.node
            to_a = await a.connect(node.port)
            to_b = await b.connect(node.port)
            with anyio.fail_after(10):
                while len(node.connections.connected()) < 2:  # noqa: ASYNC110 - node state
                    await anyio.sleep(0.01)
            b_seq = node.connections.records()[b.identity.peer_id].seq
            own_seq = node.record.seq
            for junk in (None, [], {"x": 1}, "gone", 2**70, -1.5):
                await a.send(to_a, {"type": GONE, "peer": junk, "seq": junk})
            await a.send(to_a, gone(b.identity, b_seq - 1), gone(a.identity, 1), gone(ME, 1))
            await a.send(to_a, gone(b.identity, b_seq))
            with anyio.fail_after(10):  # the node probes B ...
                while (await to_b.receive())["type"] != "probe":
                    pass
            await b.send(to_b, {"type": "hb"})  # ... B answers, and the suspicion is over
            with anyio.fail_after(10):
                while b.identity.peer_id in node.connections.liveness.suspected:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert b.identity.peer_id in node.connections.connected()
            await a.send(to_a, gone(Identity.generate(), own_seq))
            await a.send(to_a, {"type": GONE, "peer": str(node.peer_id), "seq": own_seq})
            with anyio.fail_after(10):
                while node.record.seq == own_seq:  # noqa: ASYNC110 - node state
                    await anyio.sleep(0.01)
            await a.aclose()
            await b.aclose()

        live.call(run)
        live.check_alive()


async def test_a_report_of_a_record_not_yet_seen_holds_out_only_the_one_held(setup: Setup) -> None:
    """A liar who names a seq far ahead gains nothing over naming the current one: the member's
    next record (lower than the lie) brings it back."""
    setup.hear_of_far()
    setup.say(SENDER, gone(FAR, 2**52))
    setup.exchange._refresh_now()
    assert not setup.listed()
    setup.far.update()
    setup.hear_of_far(OTHER)
    assert setup.listed()


async def test_a_new_connection_hears_the_reports_held(setup: Setup) -> None:
    """A group joined to the rest only through the member that failed tells whoever it
    connects to next."""
    setup.hear_of_far()
    setup.say(SENDER, gone(FAR, setup.far.record.seq))
    await settle()
    setup.links.sent.clear()
    setup.exchange.joined(OTHER.peer_id)
    await settle()
    assert setup.links.reports() == [(OTHER.peer_id, gone(FAR, setup.far.record.seq))]
