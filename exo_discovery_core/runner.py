"""A node run from the command line: until Ctrl-C or SIGTERM, until N peers are connected
(``run --wait-for``), or for a few seconds to see what is there (``discover``).

Each returns the exit code: 0 done, 130 stopped by Ctrl-C (128 + SIGINT, as shells report it),
1 a goal not met in time (after saying which peers did not connect, and why).
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

import anyio

from .exitcodes import EXIT_INTERRUPTED
from .liveview import LiveView, View

if TYPE_CHECKING:
    from .node import Node
    from .status import Status

EXIT_NOT_READY = 1


@dataclass(frozen=True)
class Goal:
    """``run --wait-for N``: stop with 0 once ``peers`` are connected, with 1 at ``timeout``."""

    peers: int
    timeout: float
    out: TextIO = sys.stdout  # where the ready line goes (stderr under --json)


async def run(node: Node, view: View, goal: Goal | None = None) -> int:
    """Show the node's events until a signal, or until ``goal`` is met or missed."""
    received = 0
    code: int | None = None
    started = time.monotonic()
    # subscribed before the start, so "started" comes first; the stream ends after "stopped"
    async with node.events() as events:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with node, anyio.create_task_group() as tg:

                async def stop_on_signal() -> None:
                    nonlocal received
                    async for signum in signals:
                        received = signum
                        tg.cancel_scope.cancel()
                        return

                async def give_up(goal: Goal) -> None:
                    nonlocal code
                    await anyio.sleep(goal.timeout)
                    code = EXIT_NOT_READY
                    _not_ready(node.status(), goal)
                    tg.cancel_scope.cancel()

                tg.start_soon(stop_on_signal)
                if isinstance(view, LiveView):
                    tg.start_soon(view.redraw)
                if goal is not None:
                    tg.start_soon(give_up, goal)
                async for event in events:
                    view.show(event)
                    if goal is not None and _connected(node.status()) >= goal.peers:
                        code = 0
                        _ready(node.status(), goal, time.monotonic() - started)
                        tg.cancel_scope.cancel()
        async for event in events:  # what the node said while it stopped, "stopped" last
            view.show(event)
    if code is not None:
        return code
    return EXIT_INTERRUPTED if received == signal.SIGINT else 0


async def discover(node: Node, seconds: float) -> Status:
    """What the node knows after ``seconds`` (or at a Ctrl-C, which still shows what it found)."""
    async with node:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with anyio.move_on_after(seconds):
                async for _ in signals:
                    break
        return node.status()


def _connected(status: Status) -> int:
    return sum(1 for row in status.peers if row.state == "connected")


def _ready(status: Status, goal: Goal, took: float) -> None:
    from . import members  # for --wait-for only: a node at rest never imports the table layout

    ids = members.short_ids(str(r.peer_id) for r in status.peers if r.state == "connected")
    goal.out.write(
        f"ready: {len(ids)} peer{'s' if len(ids) != 1 else ''} connected in {took:.1f} s "
        f"({', '.join(sorted(ids.values()))})\n"
    )
    goal.out.flush()


def _not_ready(status: Status, goal: Goal) -> None:
    """Which peers did not connect, and why, on stderr."""
    from . import members

    lines = [
        f"error: {_connected(status)} of {goal.peers} peers connected within {goal.timeout:g} s"
    ]
    for row in status.peers:
        if row.state != "connected":
            who = f"{row.peer_id}: " if row.peer_id else ""  # else the reason names the address
            lines.append(f"  {who}{members.why_not(row).removeprefix('↳ ')}")
    if len(lines) == 1:
        lines.append("  no peer is known: `exo-discovery doctor` shows what each plugin sees")
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
