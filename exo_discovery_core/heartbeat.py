"""Round-trip time from the heartbeats alone, with no frame added (NTP's idea).

Each liveness frame we send (heartbeats, probes and their answers) carries our send time ``t``
and echoes the peer's last ``t`` with how long we ``held`` it; what comes back is
``now - echo - held``. A sample needs frames both ways: heartbeats go one way round the ring
(:mod:`.liveness`), so a pair of two, a probe's answer or any liveness frame back gives one; a
peer with none keeps the TCP connect's round trip. The peer's numbers are its word: a sample outside
``0..bound`` seconds is dropped, and a lie only skews the round trip shown for that peer.
"""

from __future__ import annotations

import math
import time
from typing import Any


class PingClock:
    """One connection's round trip (smoothed) and when the peer was last heard from."""

    SMOOTHING = 0.25  # weight of a new sample (RFC 6298 uses 1/8; a heartbeat a second is rarer)

    def __init__(self, bound: float = 60.0) -> None:
        self.bound = bound
        self.rtt: float | None = None
        self.heard_at = time.monotonic()
        self._peer_t: float | None = None
        self._peer_t_at = 0.0

    def stamp(self, frame: dict[str, Any]) -> dict[str, Any]:
        """``frame`` (a liveness frame on its way out) with our time and the echo of theirs."""
        now = time.monotonic()
        stamped = {**frame, "t": round(now, 6)}
        if self._peer_t is not None:
            stamped["echo"] = self._peer_t
            stamped["held"] = round(now - self._peer_t_at, 6)
        return stamped

    def heard(self, message: dict[str, Any]) -> None:
        """Any frame from the peer (it was seen); a stamped one may also carry a sample."""
        now = self.heard_at = time.monotonic()
        t, echo, held = (_seconds(message.get(key)) for key in ("t", "echo", "held"))
        if t is not None:
            self._peer_t, self._peer_t_at = t, now
        if echo is not None and held is not None and held >= 0:
            sample = now - echo - held
            if 0 <= sample <= self.bound:
                old = self.rtt
                self.rtt = sample if old is None else old + self.SMOOTHING * (sample - old)


def _seconds(value: Any) -> float | None:
    """A finite number of seconds from a peer (JSON may hold a 4,000-digit integer)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1e12 < value < 1e12:
        return None
    return float(value) if math.isfinite(value) else None
