"""Heartbeat fields from an authenticated peer: the numbers behind the round-trip time are the
peer's word (``t``, ``echo``, ``held`` in its liveness frames). Whatever they hold, the node keeps the
connection and serves, and the round-trip time it shows for that peer stays None or within
``0..bound`` seconds; no other peer's figures change.

Cases: ``CASES`` (200) for the clock alone, ``LIVE_CASES`` (30) against one real node.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exo_discovery_core.heartbeat import PingClock
from exo_discovery_core.identity import Identity
from tests.support.hostile import WRITE_WITHIN, LiveNode, authenticate

CASES = 200
LIVE_CASES = 30
NUMBERS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**63, -1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10)
    | st.lists(st.integers(), max_size=2)
)
PINGS = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["hb", "probe", "ping"])},
        optional={"t": NUMBERS, "echo": NUMBERS, "held": NUMBERS, "w": NUMBERS, "a": NUMBERS},
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=CASES, deadline=None)
@given(PINGS)
def test_any_ping_fields_leave_the_round_trip_none_or_in_bounds(
    pings: list[dict[str, Any]],
) -> None:
    clock = PingClock(bound=2.5)
    for ping in pings:
        clock.heard(ping)
        assert clock.rtt is None or (math.isfinite(clock.rtt) and 0 <= clock.rtt <= 2.5)
        reply = clock.stamp({"type": "hb"})  # what we send back must be valid JSON numbers
        assert all(
            isinstance(reply.get(k), float) and math.isfinite(reply[k])
            for k in ("t", "echo", "held")
            if k in reply
        )


def test_an_honest_echo_gives_the_round_trip() -> None:
    ours = PingClock(bound=2.5)
    theirs = PingClock(bound=2.5)
    theirs.heard(ours.stamp({"type": "hb"}))
    ours.heard(theirs.stamp({"type": "hb"}))
    assert ours.rtt is not None and 0 <= ours.rtt < 0.5


def test_hostile_pings_keep_the_connection_and_bounded_figures() -> None:
    with LiveNode() as live:
        client = Identity.generate()

        @settings(
            max_examples=LIVE_CASES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(PINGS)
        def target(pings: list[dict[str, Any]]) -> None:
            live.ensure_alive()

            async def attack() -> tuple[float | None, bool, bool]:
                session = await authenticate(live.node.port, client)
                async with session._stream:
                    for ping in pings:
                        await session.send(ping, WRITE_WITHIN)
                    sent_at = time.monotonic()

                    def read_them_all() -> bool:  # frames are read in order: the last one too
                        ago = live.node.connections.last_heard().get(client.peer_id)
                        return ago is not None and time.monotonic() - ago >= sent_at

                    with anyio.move_on_after(5):
                        while not read_them_all():  # noqa: ASYNC110 - a predicate, no event
                            await anyio.sleep(0.01)
                    kept = client.peer_id in live.node.connections.last_heard()
                    trips = live.node.connections.round_trips()
                    return trips.get(client.peer_id), kept, read_them_all()

            rtt, kept, read = live.call(attack)
            assert kept, "an odd heartbeat field closed the connection"
            assert read, "the heartbeats were not all read within 5 s: nothing was checked"
            assert rtt is None or (math.isfinite(rtt) and 0 <= rtt <= 60.0), rtt
            live.check_alive()

        target()
