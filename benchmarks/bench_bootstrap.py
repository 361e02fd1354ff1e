"""Bootstrap: a peer's listen socket opens -> ``connected`` on the node that was told its address.

Plugin: node B runs first with ``--plugins bootstrap --bootstrap-peers 127.0.0.1:PORT``; after a
delay (so B's redial backoff has reached its steady state, and the phase of its retries against
A's start varies) node A starts on PORT. Figure: B's ``connected`` (to A) minus A's ``started``,
both as received here (``_mono``).

Reference: exo's old bootstrap loop, a bare Python client that tries a TCP connect every 5 s
(fixed tick) until one succeeds, put through the same procedure with the same delays against a
node A of its own; both procedures run side by side (different ports) in each round.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from .common import Deadline, Fleet, Node, Row, clean_env, end_process, free_port, median, track
from .common import spread as spread_of

NAME = "bootstrap"
ROUNDS = 5
FIRST_DELAY_S = 4.0  # B's backoff (0.25 s doubling, capped at redial_max = 2 s) is at its cap
PHASE_SPAN_S = 5.0  # delays spread over one 5 s tick of the reference: every phase once
OLD_TICK_S = 5.0

OLD_LOOP = """
import json, socket, sys, time
port, tick = int(sys.argv[1]), float(sys.argv[2])
print(json.dumps({"event": "started"}), flush=True)
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        time.sleep(tick)
        continue
    print(json.dumps({"event": "connected"}), flush=True)
    break
"""


class OldLoop:
    """The reference client; its stdout lines are stamped on arrival like a node's events."""

    def __init__(self, port: int) -> None:
        self.proc = track(
            subprocess.Popen(
                [sys.executable, "-c", OLD_LOOP, str(port), str(OLD_TICK_S)],
                stdout=subprocess.PIPE, env=clean_env(), text=True,
            )
        )  # fmt: skip
        self.seen: dict[str, float] = {}
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            mono = time.monotonic()
            event: dict[str, Any] = json.loads(line)
            with self._cond:
                self.seen[str(event["event"])] = mono
                self._cond.notify_all()

    def wait(self, kind: str, timeout: float) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: kind in self.seen, timeout):
                raise TimeoutError(f"old bootstrap loop: no {kind!r} within {timeout:g} s")
            return self.seen[kind]


def _round(fleet: Fleet, index: int, delay: float, deadline: Deadline) -> tuple[float, float]:
    port_plugin, port_ref = free_port(), free_port()
    b = fleet.start(f"b{index}", "--bootstrap-peers", f"127.0.0.1:{port_plugin}",
                    plugins="bootstrap")  # fmt: skip
    old = OldLoop(port_ref)
    a_plugin: Node | None = None
    a_ref: Node | None = None
    try:
        b.wait_started(deadline.left(30))
        old.wait("started", deadline.left(30))
        time.sleep(delay)
        a_plugin = fleet.start(f"a{index}", "--port", str(port_plugin))
        a_ref = fleet.start(f"r{index}", "--port", str(port_ref))
        started_plugin = a_plugin.wait_started(deadline.left(30))["_mono"]
        started_ref = a_ref.wait_started(deadline.left(30))["_mono"]
        connected = b.wait_for("connected", deadline.left(20), peer_id=a_plugin.peer_id)
        reference = old.wait("connected", deadline.left(OLD_TICK_S + 10))
        return connected["_mono"] - started_plugin, reference - started_ref
    finally:
        end_process(old.proc)
        for node in (b, a_plugin, a_ref):
            if node is not None:
                node.stop()


def run() -> list[Row]:
    deadline = Deadline(220, NAME)
    plugin: list[float] = []
    reference: list[float] = []
    with Fleet(NAME) as fleet:
        for index in range(ROUNDS):
            delay = FIRST_DELAY_S + PHASE_SPAN_S * (index + 0.5) / ROUNDS
            got, ref = _round(fleet, index, delay, deadline)
            plugin.append(got)
            reference.append(ref)
    return [
        Row(NAME, "A started -> B connected (bootstrap plugin), median", median(plugin), "s",
            "bare client, connect retried every 5 s", median(reference),
            note=f"plugin {spread_of(plugin)}; reference {spread_of(reference)}; A started "
            f"{FIRST_DELAY_S:g}-{FIRST_DELAY_S + PHASE_SPAN_S:g} s after B (and the reference "
            "client), phases spread evenly; no target set (the reference is what it replaces)",
            extra={"plugin_s": plugin, "reference_s": reference}),
        Row(NAME, "A started -> B connected, worst of the runs", max(plugin), "s",
            "bare client, worst of the runs", max(reference)),
    ]  # fmt: skip
