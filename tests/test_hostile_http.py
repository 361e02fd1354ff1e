"""Hostile http_sd answers: random bytes, random JSON and mutated target groups, served by a
real loopback HTTP server to the http plugin's client and to a plugin that keeps polling.

Through ``HttpSource.fetch`` and ``group_candidates`` each answer ends in candidates (bounded by
``max_targets``, every address a valid one) or one ``HttpSourceError`` line that does not echo
the answer, never another exception. Through a polling plugin, an answer that is not a target
list leaves the last good set in place, and the next good answer is taken.

Cases: ``CASES`` (200) through the client, ``POLL_CASES`` (25) through the polling plugin.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo_discovery_core import Address, NodeInfo, PeerCandidate
from exo_discovery_core.identity import Identity
from exo_discovery_core.targetgroups import group_candidates
from exo_discovery_core.testing import collecting
from exo_discovery_http import HttpConfig, HttpPlugin, HttpSource, HttpSourceError
from tests.support.http_sd import SdServer

CASES = 200
POLL_CASES = 25
MAX_TARGETS = 40
PEER = Identity.generate().peer_id
NODE = NodeInfo(
    peer_id=Identity.generate().peer_id,
    namespace="hostile",
    port=52417,
    listen_addresses=(Address(host="127.0.0.1", port=52417),),
)
GOOD = [
    {"targets": ["10.9.0.1:1", "10.9.0.2:2"], "labels": {"peer_id": str(PEER)}},
    {"targets": ["10.9.0.3"], "labels": {"k": "v"}},
]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
targets = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A[0-9a-z.:\[\]%_-]{1,40}\Z"),
    st.sampled_from(
        [
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "[::1]",
            "[::1]:",
            "::1",
            "a..b:1",
            "1.2.3.4:²",
            "x" * 300,
            ":80",
            "[zz]:1",
            "h:-1",
            str(PEER),
        ]
    ),
    json_values,
)
labels = st.dictionaries(
    st.text(max_size=12) | st.just("peer_id") | st.from_regex(r"\A[a-z_]{1,10}\Z"),
    st.text(max_size=60) | st.just(str(PEER)) | json_values,
    max_size=4,
)
groups = st.fixed_dictionaries(
    {"targets": st.lists(targets, max_size=6)}, optional={"labels": labels, "x": json_values}
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(groups, max_size=12).map(lambda g: json.dumps(g).encode()),
    st.integers(1, 200).map(lambda cut: json.dumps(GOOD).encode()[:cut]),
)
SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _checked(answer: list[Any] | None) -> frozenset[PeerCandidate] | None:
    """The candidates of a fetched answer, checked for what a hostile answer may never cause."""
    if answer is None:
        return None
    candidates, problems = group_candidates(answer, NODE.port, source="answer")
    assert len(candidates) <= MAX_TARGETS
    for candidate in candidates:
        assert candidate.addresses and all(1 <= a.port <= 65535 for a in candidate.addresses)
    assert all(len(p) < 1000 for p in problems)
    return frozenset(candidates)


async def _fetch(url: str) -> list[Any] | None:
    async with HttpSource(HttpConfig(url=url, timeout=5.0, max_targets=MAX_TARGETS)) as source:
        try:
            return await source.fetch()
        except HttpSourceError as exc:
            message = str(exc)
            assert exc.fix and "\n" not in message and len(message) < 1000
            return None


def test_hostile_answers_parse_or_fail_cleanly() -> None:
    """Cases: CASES (200)."""
    with SdServer() as sd:

        @settings(max_examples=CASES, **SETTINGS)
        @given(bodies)
        def target(body: bytes) -> None:
            with sd.lock:
                sd.body = body
            _checked(anyio.run(_fetch, sd.url))

        target()


def test_poll_keeps_the_last_good_set() -> None:
    """Cases: POLL_CASES (25) answers served to a plugin that keeps polling."""
    good = json.dumps(GOOD).encode()
    config = {"refresh_interval": 0.05, "timeout": 1.0, "max_targets": MAX_TARGETS}
    with SdServer(body=good) as sd, start_blocking_portal("asyncio") as portal:
        good_set = _checked(anyio.run(_fetch, sd.url))
        assert good_set is not None and len(good_set) == 2
        with portal.wrap_async_context_manager(
            collecting(HttpPlugin(), {"url": sd.url, **config}, name="http", node=NODE)
        ) as sets:
            assert portal.call(sets.wait_for, 1) == good_set

            def after_two_requests(body: bytes) -> None:
                """Serve ``body``; return once a request got it and the plugin handled the answer."""
                with sd.lock:
                    sd.body = body
                portal.call(sd.wait_requests, len(sd.requests) + 2)

            @settings(max_examples=POLL_CASES, **SETTINGS)
            @given(bodies)
            def target(body: bytes) -> None:
                with sd.lock:
                    sd.body = body
                taken = _checked(anyio.run(_fetch, sd.url))
                after_two_requests(body)
                assert sets.items[-1] == (good_set if taken is None else taken)
                after_two_requests(good)
                assert sets.items[-1] == good_set

            target()
