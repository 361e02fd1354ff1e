"""The peer table without sockets: what each write changed, the learned ids, this node left out."""

from __future__ import annotations

import time

import pytest

from exo_discovery_core import Address, PeerCandidate
from exo_discovery_core.identity import Identity
from exo_discovery_core.peertable import PeerTable, TableDiff

ME = Identity.generate().peer_id
A = Identity.generate().peer_id
B = Identity.generate().peer_id


def at(port: int, peer_id: str | None = None, **metadata: str) -> PeerCandidate:
    return PeerCandidate.at("10.0.0.1", port, peer_id, **metadata)


def addr(port: int) -> Address:
    return Address(host="10.0.0.1", port=port)


def keys(diff: TableDiff) -> dict[str, list[str]]:
    return {
        "added": [p.key for p in diff.added],
        "changed": [p.key for p in diff.changed],
        "removed": [p.key for p in diff.removed],
        "identified": [f"{i.was.key}->{i.now.key}" for i in diff.identified],
    }


def test_a_new_peer_is_added_once_and_the_same_set_again_changes_nothing() -> None:
    seen: list[TableDiff] = []
    table = PeerTable(ME, on_change=seen.append)
    diff = table.replace("static", [at(1, str(A))])
    assert keys(diff) == {"added": [str(A)], "changed": [], "removed": [], "identified": []}
    assert not table.replace("static", [at(1, str(A))])
    assert seen == [diff], "on_change hears every non-empty diff, and only those"


def test_a_second_source_or_address_is_a_change_and_a_missing_peer_is_removed() -> None:
    table = PeerTable(ME)
    table.replace("static", [at(1, str(A))])
    diff = table.replace("mdns", [at(2, str(A))])
    assert keys(diff)["changed"] == [str(A)]
    [peer] = diff.changed
    assert peer.sources == {"static", "mdns"} and peer.addresses == (addr(1), addr(2))
    table.replace("mdns", [])
    diff = table.replace("static", [])
    assert keys(diff)["removed"] == [str(A)] and not table.merged()


def test_metadata_alone_is_no_change() -> None:
    table = PeerTable(ME)
    table.replace("static", [at(1, str(A), name="one")])
    assert not table.replace("static", [at(1, str(A), name="two")])
    assert table.merged()[str(A)].metadata == {"name": "two"}


def test_learning_the_id_of_an_address_only_peer_is_one_identification() -> None:
    table = PeerTable(ME)
    added = table.replace("bootstrap", [at(1)])
    [unknown] = added.added
    assert unknown.peer_id is None and unknown.key == "10.0.0.1:1"
    diff = table.learn(addr(1), A)
    assert keys(diff) == {
        "added": [],
        "changed": [],
        "removed": [],
        "identified": [f"10.0.0.1:1->{A}"],
    }
    assert diff.identified[0].now.peer_id == A
    assert not table.learn(addr(1), A), "learning the same again is no news"
    # later sets of that source keep mapping to the learned id
    assert keys(table.replace("bootstrap", [at(1), at(2)]))["added"] == ["10.0.0.1:2"]
    assert set(table.merged()) == {str(A), "10.0.0.1:2"}


def test_an_address_only_peer_identified_as_a_known_peer_merges_into_it() -> None:
    table = PeerTable(ME)
    table.replace("exchange", [at(5, str(A))])
    table.replace("bootstrap", [at(1)])
    diff = table.learn(addr(1), A)
    assert keys(diff)["identified"] == [f"10.0.0.1:1->{A}"]
    assert keys(diff)["changed"] == [], "the identification tells it all"
    assert table.merged()[str(A)].sources == {"exchange", "bootstrap"}


def test_this_node_is_never_in_the_table() -> None:
    table = PeerTable(ME)
    assert not table.replace("static", [at(1, str(ME))])
    table.replace("bootstrap", [at(2)])
    diff = table.learn(addr(2), ME)  # we dialed ourselves
    assert keys(diff)["removed"] == ["10.0.0.1:2"] and not table.merged()


def test_a_failed_source_is_kept_until_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    table = PeerTable(ME)
    table.replace("flaky", [at(1, str(A))])
    assert table.next_expiry() is None, "nothing failing: nothing to wake up for"
    table.source_failed("flaky", ttl=5)
    assert table.next_expiry() == 1005.0
    now[0] += 4
    assert not table.expire() and str(A) in table.merged()
    now[0] += 2
    assert keys(table.expire())["removed"] == [str(A)]
    assert table.next_expiry() is None


def test_a_snapshot_stays_as_it_was() -> None:
    table = PeerTable(ME)
    table.replace("static", [at(1, str(A))])
    before = table.merged()
    table.replace("static", [at(1, str(B))])
    assert set(before) == {str(A)} and set(table.merged()) == {str(B)}
