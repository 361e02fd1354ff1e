"""Peer exchange deltas: after one full list a sender sends what changed, numbered; the receiver
applies deltas in order only, and a gap makes it ignore them and ask for the full list again."""

from __future__ import annotations

import base64
from typing import Any

import anyio

from exo_discovery_core.exchange import RESYNC_EVERY, Heard, Outbox
from exo_discovery_core.identity import Identity, PeerId
from exo_discovery_core.models import Address
from exo_discovery_core.records import LocalRecord, PeerRecord
from tests.support.clock import Clock

IDENTITIES = [Identity.generate() for _ in range(12)]
ME, SENDER = IDENTITIES[0].peer_id, IDENTITIES[1].peer_id
OTHERS = IDENTITIES[2:]


def _record(identity: Identity) -> PeerRecord:
    address = Address(host="127.0.0.1", port=4000)
    return LocalRecord(
        identity, None, protocol="exo-discovery/2", addresses=[address], meta={}
    ).record


RECORDS = {i.peer_id: _record(i) for i in OTHERS}


def _listing(*indexes: int) -> dict[PeerId, PeerRecord]:
    return {OTHERS[i].peer_id: RECORDS[OTHERS[i].peer_id] for i in indexes}


def _peers_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "peers"]


def _deliver(heard: Heard, messages: list[dict[str, Any]]) -> None:
    for message in messages:
        if message["type"] == "peers":
            heard.peers(SENDER, message, sender_on_this_host=True)
            heard.take(SENDER, message.get("records"))
        else:
            heard.records(SENDER, message)


def test_after_the_first_full_list_only_what_changed_is_sent_and_the_lists_agree() -> None:
    outbox, heard = Outbox(), Heard(ME, per_sender=64, total=256, clock=Clock())
    steps = [(0, 1, 2), (0, 1, 2, 3), (1, 2, 3), (1, 2, 3), (2, 3, 4, 5, 6, 7, 8), (8,)]
    for n, step in enumerate(steps):
        messages = outbox.messages(ME, _listing(*step))
        peers = _peers_messages(messages)
        if n == 0:
            assert "peers" in peers[0]
        elif n == 3:
            assert peers == []  # nothing changed: nothing said
        elif n in (1, 2):
            assert "peers" not in peers[0] and len(peers[0]["add"]) + len(peers[0]["remove"]) == 1
        _deliver(heard, messages)
        assert set(heard.ages()) == {OTHERS[i].peer_id for i in step}
        assert not heard.out_of_step(SENDER)


def test_a_delta_out_of_order_is_ignored_and_the_full_list_is_asked_for_once_a_second() -> None:
    clock = Clock()
    outbox, heard = Outbox(), Heard(ME, per_sender=64, total=256, clock=clock)
    _deliver(heard, outbox.messages(ME, _listing(0, 1)))
    lost = outbox.messages(ME, _listing(0, 1, 2))  # a frame lost with a replaced connection
    assert lost
    later = _peers_messages(outbox.messages(ME, _listing(0, 1, 2, 3)))
    _deliver(heard, later)
    assert set(heard.ages()) == {OTHERS[0].peer_id, OTHERS[1].peer_id}  # not applied out of order
    assert heard.out_of_step(SENDER)
    assert not heard.out_of_step(SENDER)  # asked: not again within RESYNC_EVERY
    _deliver(heard, _peers_messages(outbox.messages(ME, _listing(0, 1, 2, 3, 4))))
    assert OTHERS[4].peer_id not in heard.ages()  # still out of step: deltas ignored
    clock.now += RESYNC_EVERY
    assert heard.out_of_step(SENDER)  # no full list came: asked again
    outbox.forget(ME)  # the sender honours the request: a full list and every record again
    _deliver(heard, outbox.messages(ME, _listing(0, 4, 5)))
    assert set(heard.ages()) == {OTHERS[i].peer_id for i in (0, 4, 5)}
    assert not heard.out_of_step(SENDER)
    _deliver(heard, outbox.messages(ME, _listing(4, 5)))
    assert set(heard.ages()) == {OTHERS[4].peer_id, OTHERS[5].peer_id}


def test_a_gap_in_the_records_stream_also_puts_the_sender_out_of_step() -> None:
    outbox, heard = Outbox(), Heard(ME, per_sender=64, total=256, clock=Clock())
    _deliver(heard, outbox.messages(ME, _listing(0)))
    outbox.own(ME, RECORDS[OTHERS[0].peer_id])  # numbered, never delivered
    _deliver(heard, outbox.messages(ME, _listing(0, 1)))
    assert heard.out_of_step(SENDER)


def test_relayed_ages_are_sent_again_on_a_refresh_and_only_then() -> None:
    clock = Clock()
    outbox, heard = Outbox(), Heard(ME, per_sender=64, total=256, clock=clock)
    listing = _listing(0, 1)
    ages = {OTHERS[1].peer_id: 2.0}  # 0 is our connection (standing), 1 is relayed
    _deliver(heard, outbox.messages(ME, listing, ages))
    assert heard.ages() == {OTHERS[0].peer_id: 0.0, OTHERS[1].peer_id: 2.0}
    clock.now += 1.0
    assert _peers_messages(outbox.messages(ME, listing, {OTHERS[1].peer_id: 2.5})) == []
    refresh = _peers_messages(outbox.messages(ME, listing, {OTHERS[1].peer_id: 2.5}, again=True))
    assert refresh[0]["add"] == [str(OTHERS[1].peer_id)] and refresh[0]["ages"] == [2.5]
    _deliver(heard, refresh)
    assert heard.ages() == {OTHERS[0].peer_id: 0.0, OTHERS[1].peer_id: 2.5}
    # the relayed member becomes a connection of the sender: said at once, no refresh needed
    _deliver(heard, outbox.messages(ME, listing, {}))
    assert heard.ages() == {OTHERS[0].peer_id: 0.0, OTHERS[1].peer_id: 0.0}


def _records_sent(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("records", ())) for m in messages)  # alone, or riding in a list


def test_the_records_of_the_recipients_own_connections_wait_until_it_no_longer_has_them() -> None:
    outbox = Outbox()
    listing = _listing(0, 1, 2)
    has = {OTHERS[0].peer_id, OTHERS[1].peer_id}  # it lists them as its connections
    assert _records_sent(outbox.messages(ME, listing, has=has)) == 1
    assert _records_sent(outbox.messages(ME, listing, has=has)) == 0
    assert _records_sent(outbox.messages(ME, listing, has={OTHERS[0].peer_id})) == 1


class _Links:
    """Connected peers with their records; what was sent to each is kept."""

    def __init__(self, *peers: PeerId) -> None:
        self.up = {peer: RECORDS[peer] for peer in peers}
        self.sent: dict[PeerId, list[dict[str, Any]]] = {peer: [] for peer in peers}

    def connected(self) -> dict[PeerId, Address]:
        return {}

    def records(self) -> dict[PeerId, PeerRecord]:
        return dict(self.up)

    def update_record(self, record: PeerRecord) -> bool:
        return False

    async def send(self, peer_id: PeerId, message: dict[str, Any]) -> bool:
        self.sent.setdefault(peer_id, []).append(message)
        return True


def test_a_peer_whose_connection_ended_stays_a_candidate_while_another_lists_it() -> None:
    """Others do not send us the records of our own connections; the record its handshake
    showed is kept, so when the connection ends the peer is still dialable."""
    from exo_discovery_core.exchange import PeerExchange
    from exo_discovery_core.peertable import PeerTable

    peer = OTHERS[0].peer_id

    links, table = _Links(peer), PeerTable(ME)
    links.up[SENDER] = RECORDS[peer]
    exchange = PeerExchange(ME, table, links, per_sender=64, total=256)
    sender_at = Address(host="127.0.0.1", port=5000)
    exchange.received(SENDER, sender_at, {"type": "peers", "peers": [str(peer)], "n": 0})
    assert table.get(peer) is not None
    del links.up[peer]  # its connection ended; the sender never sent its record
    exchange.forget(peer)
    other = OTHERS[1].peer_id  # the sender connects to another: the table is made again
    exchange.received(SENDER, sender_at, {"type": "peers", "n": 1, "add": [str(other)]})
    assert table.get(other) is None  # no record of it yet
    kept = table.get(peer)
    assert kept is not None and kept.addresses == RECORDS[peer].addresses


def test_a_delta_waits_for_the_announce_gap_a_first_list_does_not() -> None:
    import time

    from exo_discovery_core.exchange import ANNOUNCE_GAP

    outbox = Outbox()
    assert outbox.due_in(ME, time.monotonic()) == 0.0  # never told: its first list at once
    before = time.monotonic()
    outbox.messages(ME, _listing(0))
    after = time.monotonic()
    assert outbox.due_in(ME, before) >= ANNOUNCE_GAP
    assert outbox.due_in(ME, after + ANNOUNCE_GAP) == 0.0
    outbox.forget(ME)  # gone (or asked for its full list again): at once
    assert outbox.due_in(ME, before) == 0.0


def _records_to(links: _Links, peer_id: PeerId) -> set[PeerId]:
    from exo_discovery_core.records import verify

    return {
        verify(base64.b64decode(entry)).peer_id
        for message in links.sent[peer_id]
        for entry in message.get("records", ())
    }


def _round(exchange: Any) -> None:
    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await exchange._round(tg, again=False)
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_record_is_not_sent_to_a_peer_its_owner_lists_as_a_connection() -> None:
    """Either end of a connection saying so is enough: the handshake showed each the other's
    record (in a forming mesh the owner's list often arrives before the recipient's)."""
    from exo_discovery_core.exchange import PeerExchange
    from exo_discovery_core.peertable import PeerTable

    a, b, c = (OTHERS[i].peer_id for i in range(3))
    links = _Links(a, b, c)
    exchange = PeerExchange(ME, PeerTable(ME), links, per_sender=64, total=256)
    at = Address(host="127.0.0.1", port=5000)
    exchange.received(b, at, {"type": "peers", "peers": [str(a)], "n": 0})  # b: "I have a"
    _round(exchange)
    assert _records_to(links, a) == {c}, "b's record is a's already (b says so)"
    assert _records_to(links, b) == {c}, "and a's is b's"
    assert _records_to(links, c) == {a, b}


def test_records_ride_in_the_peers_message_while_it_has_room() -> None:
    """One frame for a list and its records; what does not fit follows in records messages,
    every message within a frame."""
    from exo_discovery_core import wire

    many = [Identity.generate() for _ in range(60)]
    listing = {i.peer_id: _record(i) for i in many}
    messages = Outbox().messages(ME, listing)
    assert messages[0]["type"] == "peers" and messages[0]["records"]
    assert all(m["type"] == "records" for m in messages[1:]) and len(messages) > 1
    assert _records_sent(messages) == len(many)
    assert all(len(wire.dumps(m)) <= wire.MAX_FRAME for m in messages)
    heard = Heard(ME, per_sender=64, total=256, clock=Clock())
    for message in messages:
        if message["type"] == "peers":
            heard.peers(SENDER, message, sender_on_this_host=True)
            heard.take(SENDER, message["records"])
        else:
            heard.records(SENDER, message)
    assert {c.peer_id for c in heard.candidates()} == set(listing)


def test_past_the_bound_a_relay_lists_its_connections_then_the_members_it_heard_of_first() -> None:
    """What a cluster larger than ``MAX_PEERS`` (100) sees, as docs/scaling.md says: a relay's
    list holds its own connections first, then the members it relays in the order it heard of
    them (connection by connection), cut at 100; a receiver takes the first
    ``exchange_peers_per_sender`` of it. So a member heard of last by a relay that knows 100
    others goes no further than that relay."""
    from exo_discovery_core.exchange import MAX_PEERS, PeerExchange
    from exo_discovery_core.peertable import PeerTable

    members = [Identity.generate() for _ in range(150)]
    records = {i.peer_id: _record(i) for i in members}
    first, second, recipient = (OTHERS[i].peer_id for i in range(3))
    links = _Links(first, second, recipient)
    exchange = PeerExchange(ME, PeerTable(ME), links, per_sender=MAX_PEERS, total=1000)
    exchange.relay = True
    at = Address(host="127.0.0.1", port=5000)
    for sender, heard in ((first, members[:90]), (second, members[60:])):
        ids = [str(i.peer_id) for i in heard]
        exchange.received(sender, at, {"type": "peers", "peers": ids, "ages": [1.0] * len(ids)})
        for start in range(0, len(heard), 30):
            batch = [records[i.peer_id].relayed for i in heard[start : start + 30]]
            exchange.received(sender, at, {"type": "records", "records": batch})
    listed, ages = exchange.listed()
    assert len(listed) == 3 + 150  # it knows them all ...
    sent = Outbox().messages(recipient, listed, ages)
    [full] = [m for m in sent if m["type"] == "peers"]
    # ... but tells its connections 100: its two other connections, then the first 98 heard
    assert full["peers"] == [str(first), str(second)] + [str(i.peer_id) for i in members[:98]]
    receiver = Heard(recipient, per_sender=64, total=256)
    receiver.peers(ME, full, sender_on_this_host=True)
    assert list(receiver.ages()) == [first, second] + [i.peer_id for i in members[:62]]


def test_a_member_new_to_the_recipient_is_news_and_a_member_it_lists_or_was_sent_is_not() -> None:
    from exo_discovery_core.exchange import ANNOUNCE_GAP, NEWS_GAP

    clock = Clock()
    outbox = Outbox(clock)
    ages = {OTHERS[1].peer_id: 1.0}  # relayed
    outbox.messages(ME, _listing(0, 1), ages)  # its first list
    knows = {OTHERS[0].peer_id, OTHERS[1].peer_id}  # it lists both to us
    assert not outbox.news_for(ME, _listing(0, 1), knows)  # only ages move: nothing new
    assert outbox.news_for(ME, _listing(0, 1, 2), knows)  # member 2: new to it
    assert not outbox.news_for(ME, _listing(0, 1, 2), knows | {OTHERS[2].peer_id})  # it has it
    assert not outbox.news_for(OTHERS[2].peer_id, _listing(2), set())  # its own record: not news
    clock.now += NEWS_GAP
    assert outbox.due_in(ME, clock.now, news=True) == 0.0
    assert outbox.due_in(ME, clock.now, news=False) == ANNOUNCE_GAP - NEWS_GAP
    outbox.messages(ME, _listing(0, 1, 2), ages)  # sent: its record is not news again
    assert not outbox.news_for(ME, _listing(0, 1, 2), knows)
    assert outbox.due_in(ME, clock.now, news=True) == NEWS_GAP  # and one delta per gap


def _relay(clock: Clock, *peers: PeerId) -> tuple[Any, _Links]:
    from exo_discovery_core.exchange import PeerExchange
    from exo_discovery_core.peertable import PeerTable

    links = _Links(*peers)
    exchange = PeerExchange(ME, PeerTable(ME), links, per_sender=64, total=256, clock=clock)
    exchange.relay = True
    return exchange, links


def _deltas_to(links: _Links, peer_id: PeerId) -> list[dict[str, Any]]:
    return [m for m in links.sent[peer_id] if m["type"] == "peers" and "add" in m]


def test_with_relay_news_of_a_member_crosses_a_hop_after_the_news_gap_other_deltas_wait() -> None:
    """A relay told its peer of a member it did not list (a new signed record) one
    ``NEWS_GAP`` after its last message, not ``ANNOUNCE_GAP``: each hop of a 100-member,
    M = 8 cluster waited up to that second. What carries nothing the peer lacks (a member it
    lists itself, ages) waits the whole gap, as before."""
    from exo_discovery_core.exchange import ANNOUNCE_GAP, NEWS_GAP

    clock = Clock()
    source, recipient, new, known = (OTHERS[i].peer_id for i in range(4))
    exchange, links = _relay(clock, source, recipient)
    at = Address(host="127.0.0.1", port=5000)
    _round(exchange)  # first lists, at once
    assert [m["type"] for m in links.sent[recipient]] == ["peers"]
    # the recipient lists `known` (it relays it): it knows that member
    exchange.received(recipient, at, {"type": "peers", "peers": [str(known)], "ages": [1.0],
                                      "n": 0})  # fmt: skip
    exchange.received(source, at, {"type": "peers", "peers": [str(new)], "ages": [1.0], "n": 0,
                                   "records": [RECORDS[new].relayed]})  # fmt: skip
    clock.now += NEWS_GAP
    _round(exchange)
    [delta] = _deltas_to(links, recipient)
    assert delta["add"] == [str(new)] and _records_to(links, recipient) >= {new}
    # the source now relays `known` too, whose record the recipient was never sent by us
    exchange.received(source, at, {"type": "peers", "n": 1, "add": [str(known)], "ages": [1.0],
                                   "remove": [], "records": [RECORDS[known].relayed]})  # fmt: skip
    clock.now += NEWS_GAP
    _round(exchange)
    assert len(_deltas_to(links, recipient)) == 1, "nothing it lacks: it waits for the gap"
    clock.now += ANNOUNCE_GAP - NEWS_GAP
    _round(exchange)
    assert _deltas_to(links, recipient)[-1]["add"] == [str(known)]


def test_without_relay_news_waits_for_the_announce_gap() -> None:
    from exo_discovery_core.exchange import ANNOUNCE_GAP, NEWS_GAP

    clock = Clock()
    source, recipient, new = (OTHERS[i].peer_id for i in range(3))
    exchange, links = _relay(clock, source, recipient)
    exchange.relay = False
    _round(exchange)
    links.up[new] = RECORDS[new]  # a new connection: in a full mesh the recipient dials it
    clock.now += NEWS_GAP
    _round(exchange)
    assert _deltas_to(links, recipient) == []
    clock.now += ANNOUNCE_GAP - NEWS_GAP
    _round(exchange)
    assert _deltas_to(links, recipient)[-1]["add"] == [str(new)]
