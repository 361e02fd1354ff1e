"""Steady when starved: a meshed cluster beside busy loops, and an embedded node whose host blocks.

1. 20 members meshed (as in ``scale``: each told only the first one's address), then 16 busy
   loops (``python -c "while True: pass"``) hold both cores for 60 s. Figures: disconnects of live
   peers in that window (every member is alive), and a ``SIGSTOP`` of one member sent 45 s into it
   -> every other member reports it gone. Reference: serf's 20 agents, the same window, the same
   loops.
2. A node embedded in this process with :class:`~exo_discovery_core.threaded.NodeThread`, connected
   to a node process; this process blocks its own event loop for 5 s (``time.sleep``). Figure:
   disconnects either side reports. Reference: the same with a plain ``Node`` on the blocked loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from exo_discovery_core import PeerCandidate
from exo_discovery_core.config import ConfigSource
from exo_discovery_core.node import Node
from exo_discovery_core.threaded import NodeThread
from tests.support.static import Static

from . import serf
from .bench_scale import System, exo_system, serf_system
from .common import Deadline, Fleet, Member, Row, end_process, track
from .common import Node as NodeProcess

NAME = "starved"
MEMBERS = 20
LOOPS = 16
WINDOW_S = 60.0
STOP_AT_S = 45.0
STOP_TARGET_S = 5.0
BLOCK_S = 5.0


def _busy_loops(count: int) -> list[subprocess.Popen[bytes]]:
    return [track(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            for _ in range(count)]  # fmt: skip


def _starve(system: System, deadline: Deadline) -> tuple[int, float | None, str]:
    """(disconnects of live peers in the window, SIGSTOP -> all others report it, a note)."""
    with Fleet(f"{NAME}-{system.label.split()[0]}") as fleet:
        first = system.first(fleet, "n00")
        first.wait_started(deadline.left(30))
        members: list[Member] = [first]
        members += [system.join(fleet, f"n{i:02}", first.address) for i in range(1, MEMBERS)]
        for member in members:
            member.wait_started(deadline.left(60))
        end = time.monotonic() + deadline.left(60)
        while (
            time.monotonic() < end and min(len(m.connected_peers()) for m in members) < MEMBERS - 1
        ):
            time.sleep(0.2)
        time.sleep(1.0)
        marks = [m.mark() for m in members]
        loops = _busy_loops(LOOPS)
        try:
            time.sleep(STOP_AT_S)
            before = [len(m.snapshot()) for m in members]
            victim, others = members[-1], members[:-1]
            sent = time.monotonic()
            os.kill(victim.pid, signal.SIGSTOP)
            worst: float | None = 0.0
            for member, mark in zip(others, before[:-1], strict=True):
                try:
                    got = member.wait_for("disconnected", max(0.0, sent + 20 - time.monotonic()),
                                          start=mark, peer_id=victim.peer_id)  # fmt: skip
                    worst = max(worst or 0.0, float(got["_mono"]) - sent)
                except TimeoutError:
                    worst = None
                    break
            time.sleep(max(0.0, WINDOW_S - STOP_AT_S - (time.monotonic() - sent)))
        finally:
            for loop in loops:
                end_process(loop, grace=1.0)
        false = 0
        for member, mark, cut in zip(members, marks, before, strict=True):
            false += sum(1 for e in member.snapshot()[mark:cut] if e.get("event") == "disconnected")
    note = f"{system.label}: {LOOPS} busy loops on {os.cpu_count()} CPUs for {WINDOW_S:g} s"
    return false, worst, note


@contextlib.asynccontextmanager
async def _embedded(threaded: bool, port: int, peer_id: str) -> AsyncIterator[Any]:
    table = {"port": 0, "listen_host": "127.0.0.1", "state_dir": tempfile.mkdtemp()}
    source = ConfigSource(file_data={"node": table}, env={})
    plugins = {"static": Static(PeerCandidate.at("127.0.0.1", port, peer_id))}
    kind: Callable[..., Any] = NodeThread if threaded else Node
    async with kind(source.node_config(), source=source, plugins=plugins, entry_points=False) as n:
        yield n


def _host_blocks(threaded: bool, deadline: Deadline) -> int:
    """Disconnects reported on either side when this process blocks its loop for BLOCK_S."""
    with Fleet(f"{NAME}-host") as fleet:
        peer: NodeProcess = fleet.start("peer", plugins=None)
        peer.wait_started(deadline.left(30))

        async def main() -> int:
            embedded = _embedded(threaded, peer.port, peer.peer_id)
            async with embedded as node, node.events(replay=True) as events:
                with anyio.fail_after(deadline.left(20)):
                    async for event in events:
                        if event.event == "connected":
                            break
                peer.wait_for("connected", deadline.left(20), peer_id=str(node.peer_id))
                mark = peer.mark()
                time.sleep(BLOCK_S)  # noqa: ASYNC251 - the host blocks its own loop
                gone = 0
                with anyio.move_on_after(BLOCK_S):  # what the node said meanwhile, and after
                    async for event in events:
                        gone += event.event == "disconnected"
                theirs = [e for e in peer.snapshot()[mark:] if e.get("event") == "disconnected"]
                return gone + len(theirs)

        return anyio.run(main)


def run() -> list[Row]:
    deadline = Deadline(590, NAME)
    ours_false, ours_stop, ours_note = _starve(exo_system(), deadline)
    try:
        serf.binary()
        theirs: tuple[int, float | None, str] | None = _starve(serf_system(), deadline)
        reference = f"serf {serf.version()}, same loops"
    except serf.SerfMissing as exc:
        theirs, reference = None, f"serf: not run ({exc})"
    threaded = _host_blocks(True, deadline)
    plain = _host_blocks(False, deadline)
    return [
        Row(NAME, f"{MEMBERS} members beside {LOOPS} busy loops: disconnects of live peers in "
            f"{WINDOW_S:g} s", float(ours_false), "", reference,
            float(theirs[0]) if theirs else None, max_value=0.0,
            note=f"{ours_note}; {theirs[2] if theirs else ''}"),
        Row(NAME, f"{MEMBERS} members beside {LOOPS} busy loops: SIGSTOP -> every other member "
            "reports it gone", ours_stop, "s", reference, theirs[1] if theirs else None,
            max_value=STOP_TARGET_S,
            status="ok" if ours_stop is not None else "not all reported within 20 s"),
        Row(NAME, f"embedded node (NodeThread), host blocks its loop {BLOCK_S:g} s: "
            "disconnects either side", float(threaded), "",
            "a plain Node on the blocked loop", float(plain), max_value=0.0),
    ]  # fmt: skip
