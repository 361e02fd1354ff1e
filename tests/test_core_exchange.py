"""Peer exchange: what the peers a node hears from tell it, and when that changes its table."""

from __future__ import annotations

from exo_discovery_core.exchange import Heard
from exo_discovery_core.identity import Identity, PeerId

IDS = [Identity.generate().peer_id for _ in range(8)]
ME, GONE, A, B, C = IDS[:5]


def _peers(*ids: PeerId) -> dict[str, object]:
    return {"type": "peers", "peers": [str(p) for p in ids]}


def test_a_member_that_goes_changes_the_candidates_only_when_its_last_lister_drops_it() -> None:
    """In a mesh each remaining member announces that one went: one table refresh, not N."""
    heard = Heard(ME, per_sender=64, total=256)
    for sender in (A, B, C):
        heard.peers(sender, _peers(GONE, *(p for p in (A, B, C) if p != sender)),
                    sender_on_this_host=False)  # fmt: skip
    assert not heard.peers(A, _peers(B, C), sender_on_this_host=False)
    assert not heard.peers(B, _peers(A, C), sender_on_this_host=False)
    assert {c.peer_id for c in heard.candidates()} == set()  # no record of anyone yet
    assert heard.peers(C, _peers(A, B), sender_on_this_host=False), "the last one drops it"
    assert not heard.forget(C), "A and B still list C's peers"


def test_the_last_lister_on_this_host_counts_too() -> None:
    """A peer's loopback addresses are usable only while a sender on this host lists it."""
    heard = Heard(ME, per_sender=64, total=256)
    heard.peers(A, _peers(GONE), sender_on_this_host=True)
    heard.peers(B, _peers(GONE), sender_on_this_host=False)
    assert heard.peers(A, _peers(), sender_on_this_host=True), "no local lister any more"
    assert not heard.peers(B, _peers(GONE), sender_on_this_host=False)
    assert heard.peers(B, _peers(GONE), sender_on_this_host=True), "B is on this host now"
    assert heard.forget(B)
