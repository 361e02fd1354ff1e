"""Failure detection: a peer dies (``kill -9``) or freezes (``SIGSTOP``) -> ``disconnected``.

Node A listens; node B bootstraps to it. Once they are connected (and after a pause of a varying
fraction of the heartbeat interval), B is killed or stopped; the figure is A's
``disconnected`` (``_mono``) minus the moment the signal was sent. A kill closes the socket (the
kernel sends FIN/RST), so it is noticed at once; a frozen process keeps its socket open and only
the missing heartbeats tell, after ``dead_after`` (2.5 s by default, the reference).
"""

from __future__ import annotations

import os
import signal
import time

from exo_discovery_core.config import NodeConfig

from .common import Deadline, Fleet, Node, Row, free_port, median, spread

NAME = "failure"
ROUNDS = 3
DEAD_AFTER_S = NodeConfig().dead_after  # the defaults a user gets
HEARTBEAT_S = NodeConfig().heartbeat_interval
TARGET_S = 3.0


def _one(fleet: Fleet, a: Node, port: int, index: int, sig: int, deadline: Deadline) -> float:
    b = fleet.start(f"b{index}-{sig}", "--bootstrap-peers", f"127.0.0.1:{port}",
                    plugins="bootstrap")  # fmt: skip
    try:
        b.wait_started(deadline.left(30))
        a.wait_for("connected", deadline.left(15), peer_id=b.peer_id)
        b.wait_for("connected", deadline.left(15), peer_id=a.peer_id)
        time.sleep(1.0 + HEARTBEAT_S * (index + 0.5) / ROUNDS)  # vary the heartbeat phase
        mark = a.mark()
        sent = time.monotonic()
        os.kill(b.pid, sig)
        gone = a.wait_for("disconnected", deadline.left(DEAD_AFTER_S + 10), start=mark,
                          peer_id=b.peer_id)  # fmt: skip
        return float(gone["_mono"]) - sent
    finally:
        b.stop(grace=3)  # SIGCONT, SIGTERM, then SIGKILL


def run() -> list[Row]:
    deadline = Deadline(170, NAME)
    killed: list[float] = []
    frozen: list[float] = []
    with Fleet(NAME) as fleet:
        port = free_port()
        a = fleet.start("a", "--port", str(port))
        a.wait_started(deadline.left(30))
        for index in range(ROUNDS):
            killed.append(_one(fleet, a, port, index, signal.SIGKILL, deadline))
            frozen.append(_one(fleet, a, port, index, signal.SIGSTOP, deadline))
    reference = "dead_after (configured)"
    return [
        Row(NAME, "kill -9 -> disconnected, worst", max(killed), "s", reference, DEAD_AFTER_S,
            max_value=TARGET_S, note=f"kill -9: median {median(killed) * 1e3:.1f} ms, "
            f"{spread(killed)}", extra={"kill_s": killed}),
        Row(NAME, "SIGSTOP -> disconnected, worst", max(frozen), "s", reference, DEAD_AFTER_S,
            max_value=TARGET_S, note=f"SIGSTOP: median {median(frozen):.3f} s, {spread(frozen)}; "
            f"expected in (dead_after - heartbeat, dead_after] = ({DEAD_AFTER_S - HEARTBEAT_S:g}, "
            f"{DEAD_AFTER_S:g}] s plus scheduling", extra={"sigstop_s": frozen}),
    ]  # fmt: skip
