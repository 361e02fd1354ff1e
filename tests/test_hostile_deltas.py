"""Hostile peers deltas: whatever numbered (or mis-numbered) full lists, deltas and records
messages a connected peer sends, its listing is exactly what an independent model of the
documented rules gives (deltas only in order, on top of a numbered full list; the same bounds as
a full list), never beyond ``per_sender``, and nothing raises. A real node asked for its full
list again and again sends it at most once per ``RESYNC_EVERY``: a stranger cannot make the
resync an amplifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from exo_discovery_core.exchange import MAX_PEERS, RESYNC, RESYNC_EVERY, Heard
from exo_discovery_core.identity import Identity
from tests.support.hostile import WRITE_WITHIN, LiveNode, authenticate, json_body, json_values

POOL = [str(Identity.generate().peer_id) for _ in range(10)]
ME, SENDER = Identity.generate().peer_id, Identity.generate().peer_id
PER_SENDER = 5
JSON = json_values(6)
ENTRY = st.sampled_from(POOL) | st.sampled_from([str(ME), str(SENDER), ""]) | JSON
NUMBER = st.integers(0, 12) | JSON | st.just(True)


def _valid(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53


@dataclass
class Model:
    """The documented rules, written again: the sender's list, and the number expected next."""

    listed: list[str] = field(default_factory=list)
    expected: int | None = None

    def full(self, entries: Any, number: Any) -> None:
        wanted: list[str] = []
        for entry in entries[:MAX_PEERS] if isinstance(entries, list) else []:
            if len(wanted) >= PER_SENDER:
                break
            if entry in POOL and entry not in wanted:
                wanted.append(entry)
        self.listed = wanted
        self.expected = number + 1 if _valid(number) else None

    def delta(self, number: Any, add: Any, remove: Any) -> None:
        if self.expected is None or not _valid(number) or number != self.expected:
            self.expected = None
            return
        self.expected += 1
        gone = (
            {e for e in remove[:MAX_PEERS] if isinstance(e, str)}
            if isinstance(remove, list)
            else set()
        )
        self.listed = [i for i in self.listed if i not in gone]
        for entry in add[:MAX_PEERS] if isinstance(add, list) else []:
            if entry in POOL and entry not in self.listed and len(self.listed) < PER_SENDER:
                self.listed.append(entry)

    def records(self, number: Any) -> None:
        if self.expected is not None:
            self.expected = (
                self.expected + 1 if _valid(number) and number == self.expected else None
            )


MESSAGE = st.one_of(
    st.tuples(st.just("full"), st.lists(ENTRY, max_size=8) | JSON, NUMBER),
    st.tuples(st.just("delta"), NUMBER, st.lists(ENTRY, max_size=6) | JSON,
              st.lists(ENTRY, max_size=6) | JSON),
    st.tuples(st.just("records"), NUMBER),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(MESSAGE, max_size=14))
def test_hostile_deltas_keep_the_listing_what_the_rules_say(steps: list[tuple[Any, ...]]) -> None:
    heard, model = Heard(ME, per_sender=PER_SENDER, total=64), Model()
    for step in steps:
        if step[0] == "full":
            _, entries, number = step
            heard.peers(SENDER, {"type": "peers", "peers": entries, "n": number},
                        sender_on_this_host=False)  # fmt: skip
            model.full(entries, number)
        elif step[0] == "delta":
            _, number, add, remove = step
            heard.peers(SENDER, {"type": "peers", "n": number, "add": add, "remove": remove},
                        sender_on_this_host=False)  # fmt: skip
            model.delta(number, add, remove)
        else:
            heard.records(SENDER, {"type": "records", "n": step[1], "records": []})
            model.records(step[1])
        listed = [str(p) for p in heard.ages()]
        assert sorted(listed) == sorted(model.listed)
        assert len(listed) <= PER_SENDER
    heard.out_of_step(SENDER)  # whatever state it is in: no error
    heard.forget(SENDER)
    assert heard.ages() == {}


def test_asking_for_the_full_list_again_and_again_gets_it_once_per_resync_interval() -> None:
    """An authenticated stranger floods ``peers_resync``: the node answers with at most one full
    list per RESYNC_EVERY (it also says its list once when the connection comes up)."""
    with LiveNode() as live:
        identity = Identity.generate()
        window = 2.5 * RESYNC_EVERY

        async def run() -> tuple[int, float]:
            session = await authenticate(live.node.port, identity)
            full, began = 0, anyio.current_time()
            try:
                with anyio.move_on_after(window):
                    async with anyio.create_task_group() as tg:

                        async def flood() -> None:
                            while True:
                                await session.send_bytes(json_body(RESYNC), WRITE_WITHIN)
                                await anyio.sleep(0.02)

                        tg.start_soon(flood)
                        while True:
                            message = await session.receive()
                            if message.get("type") == "peers" and "peers" in message:
                                full += 1
            finally:
                await session.aclose()
            return full, anyio.current_time() - began

        full, flooded = live.call(run)  # the window, or longer if a busy machine stalled the loop
        assert 2 <= full <= 2 + flooded / RESYNC_EVERY  # the first list, then once a second
        live.check_alive()


def test_a_peer_claiming_a_connection_it_lacks_withholds_only_its_own_record() -> None:
    """A sender's claim "connected to X" keeps the node from relaying the sender's own record
    to X (X had it from their handshake), never a third peer's record."""
    from exo_discovery_core.exchange import PeerExchange
    from exo_discovery_core.models import Address
    from exo_discovery_core.peertable import PeerTable
    from tests.test_core_exchange_deltas import OTHERS, _Links, _records_to, _round

    liar, victim, third = (OTHERS[i].peer_id for i in range(3))
    links = _Links(liar, victim, third)
    exchange = PeerExchange(ME, PeerTable(ME), links, per_sender=64, total=256)
    at = Address(host="127.0.0.1", port=5000)
    claim = {"type": "peers", "peers": [str(victim), str(third)], "n": 0}
    exchange.received(liar, at, claim)  # it has neither connection
    _round(exchange)
    assert _records_to(links, victim) == {third}, "the liar's record alone is withheld"
    assert _records_to(links, third) == {victim}


def test_a_peer_claiming_a_connection_it_lacks_delays_only_the_news_of_itself() -> None:
    """In a full mesh a delta that only adds the recipient's own connections waits for news;
    a sender's false claim "connected to X" so delays only the listing of the sender to X,
    and the next delta with news carries it."""
    from exo_discovery_core.exchange import Outbox
    from tests.test_core_exchange_deltas import OTHERS, RECORDS, _listing

    liar, third, other = (OTHERS[i].peer_id for i in range(3))
    outbox = Outbox()
    assert outbox.messages(ME, _listing(1), hold_known=True)  # the first list: always
    has = {liar}  # the liar's claim: connected to the recipient (it is not)
    assert outbox.messages(ME, _listing(1, 0), has=has, hold_known=True) == []
    (delta,) = outbox.messages(ME, _listing(1, 0, 2), has=has, hold_known=True)
    assert set(delta["add"]) == {liar, other} and delta["remove"] == []
    assert delta["records"] == [RECORDS[other].relayed], "the liar's own record: withheld"
    assert third not in delta["add"]


def test_a_sender_trickling_new_members_gets_each_other_peer_one_delta_per_news_gap() -> None:
    """With relay, news of a member goes on after ``NEWS_GAP`` instead of ``ANNOUNCE_GAP``:
    a connected stranger that sends one new signed member every 50 ms (ids are cheap) makes
    the node send each other connection at most one frame per ``NEWS_GAP``, never one per
    member it sends."""
    from exo_discovery_core.exchange import NEWS_GAP
    from exo_discovery_core.models import Address
    from exo_discovery_core.records import LocalRecord
    from tests.support.clock import Clock
    from tests.test_core_exchange_deltas import OTHERS, _Links, _relay, _round

    clock = Clock()
    stranger, recipient = OTHERS[0].peer_id, OTHERS[1].peer_id
    exchange, links = _relay(clock, stranger, recipient)
    assert isinstance(links, _Links)
    at = Address(host="127.0.0.1", port=5000)
    exchange.received(stranger, at, {"type": "peers", "peers": [], "n": 0})
    _round(exchange)
    start, sent_before = clock.now, len(links.sent[recipient])
    for n in range(1, 41):
        member = Identity.generate()
        record = LocalRecord(member, None, protocol="exo-discovery/2", addresses=[at], meta={})
        exchange.received(stranger, at, {"type": "peers", "n": n, "add": [str(member.peer_id)],
                                         "remove": [], "ages": [1.0],
                                         "records": [record.record.relayed]})  # fmt: skip
        clock.now += 0.05
        _round(exchange)
    frames = len(links.sent[recipient]) - sent_before
    assert 2 <= frames <= 1 + (clock.now - start) / NEWS_GAP
