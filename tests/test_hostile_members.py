"""Hostile relayed members: whatever ``peers``/``ages`` a connected peer sends, the listing stays
within the bounds, no age outside 0..MEMBER_TTL is believed, and nothing raises."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exo_discovery_core.exchange import MEMBER_TTL, Heard
from exo_discovery_core.identity import Identity
from tests.support.hostile import json_values

POOL = [str(Identity.generate().peer_id) for _ in range(8)]
ME, SENDER = Identity.generate().peer_id, Identity.generate().peer_id
JSON = json_values(8)


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.sampled_from(POOL) | JSON, max_size=12),
    ages=st.lists(JSON | st.floats(allow_nan=True) | st.integers(-5, 20), max_size=12) | JSON,
)
def test_hostile_ages_never_make_a_member_older_younger_or_raise(ids: list[Any], ages: Any) -> None:
    heard = Heard(ME, per_sender=4, total=6)
    heard.peers(SENDER, {"type": "peers", "peers": ids, "ages": ages}, sender_on_this_host=False)
    listed = heard.ages()
    assert len(listed) <= 4
    assert set(map(str, listed)) <= set(POOL)
    assert all(0 <= age < MEMBER_TTL for age in listed.values())
    heard.expire()
    assert heard.forget(SENDER) == bool(listed)
    assert heard.ages() == {}
