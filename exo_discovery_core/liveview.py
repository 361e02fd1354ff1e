"""What ``exo-discovery run`` prints: the live view on a terminal, else a line per event, or one
JSON event per line (``--json``).

The live view is redrawn in place (cursor home, every line cleared to its end, the rest of the
screen cleared) at the terminal's size of the moment, on every event and every second, so a resize
never leaves an old frame behind and ages ("last seen", "next try in") stay current. Every line
is cut to the width: nothing wraps. Log records (``-v``) are drawn in the frame's log area while
stderr is the same terminal, instead of being written through the frame.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

import anyio

from .text import MAX_LINE, shown

if TYPE_CHECKING:
    from .events import NodeEvent
    from .status import PluginStatus, Status

_PEER_ID = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}")
RECENT_EVENTS = 50
LOG_LINES = 50
REDRAW_EVERY = 1.0
_HOME, _CLEAR_LINE, _CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


class View(Protocol):
    def show(self, event: NodeEvent) -> None: ...


class JsonView:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def show(self, event: NodeEvent) -> None:
        self.out.write(event.to_json() + "\n")
        self.out.flush()


class LineView:
    """One line per event: for a pipe, a file, the journal."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def show(self, event: NodeEvent) -> None:
        self.out.write(describe(event) + "\n")
        self.out.flush()


class LiveView:
    """The node, its plugins, its members and what happened lately, redrawn in place."""

    def __init__(
        self,
        status: Callable[[], Status],
        out: TextIO | None = None,
        size: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.status = status
        self.out = out or sys.stdout
        self.size = size or _terminal_size
        self.recent: deque[str] = deque(maxlen=RECENT_EVENTS)
        self.logs: deque[str] = deque(maxlen=LOG_LINES)
        self.stopped = False
        self._last_size: tuple[int, int] | None = None

    def show(self, event: NodeEvent) -> None:
        self.recent.append(describe(event))
        if event.event == "stopped":
            self.stopped = True  # the node is gone: the last frame stays, with this line
            self.out.write("\n" + describe(event) + "\n")
            self.out.flush()
            return
        self.draw()

    def log(self, line: str) -> None:
        self.logs.append(line)

    async def redraw(self, every: float = REDRAW_EVERY) -> None:
        """Redraw every ``every`` seconds (ages change; a resize is picked up) until cancelled."""
        while not self.stopped:
            await anyio.sleep(every)
            if not self.stopped:
                self.draw()

    def draw(self) -> None:
        from . import members  # the table layout: imported by a terminal's view, not under --json

        width, height = self.size()
        resized = self._last_size is not None and self._last_size != (width, height)
        self._last_size = (width, height)
        lines = self.frame(width, height)
        text = "".join(members.cut(line, width) + _CLEAR_LINE + "\n" for line in lines)
        self.out.write(("\x1b[2J" if resized else "") + _HOME + text + _CLEAR_BELOW)
        self.out.flush()

    def frame(self, width: int, height: int) -> list[str]:
        """The lines of one frame for a terminal of ``width`` x ``height``."""
        from . import members

        status = self.status()
        connected = sum(1 for row in status.peers if row.state == "connected")
        node_id = status.peer_id if width >= 120 else f"{status.peer_id[:12]}…"
        title = (
            f"exo-discovery  node {node_id}  port {status.port}  namespace {status.namespace}  "
            f"{connected}/{len(status.peers)} connected"
        )
        if len(title) + 20 <= width:
            title += "   (Ctrl-C to stop)"
        head = [title, ""]
        plugins = [_plugin_line(p) for p in status.plugins if p.state is not None or p.error]
        off = [p.name for p in status.plugins if p.state is None and not p.error]
        if off:
            plugins.append(f"  not running here: {', '.join(off)}")
        table = members.render(status.peers, width)
        top = [*head, *plugins, "", *table, ""]
        room = max(height - len(top) - 1, 2)  # the cursor's line stays free: no scrolling
        tail = ["recent:", *list(self.recent)[-(room // 2 if self.logs else room) + 1 :]]
        if self.logs:
            tail += ["log:", *list(self.logs)[-(room - len(tail)) + 1 :]]
        if width < 120:  # 52-character ids leave no room for what happened: their short form
            tail = [_PEER_ID.sub(lambda m: m[0][: members.SHORT_ID_MIN] + "…", t) for t in tail]
        return [*top, *tail][: max(height - 1, 1)]


def _terminal_size() -> tuple[int, int]:
    size = shutil.get_terminal_size()
    return size.columns, size.lines


def _plugin_line(plugin: PluginStatus) -> str:
    """``plugin mdns      ok: announcing 10.0.0.1``, ``... idle: to use it, set ...``."""
    if plugin.error:
        return f"  plugin {plugin.name:<10} failing: {shown(plugin.error)}"
    return f"  plugin {plugin.name:<10} {plugin.state}: {shown(plugin.health or '')}".rstrip(": ")


class LogArea(logging.Handler):
    """Log records into a live view's log area (while stderr is the view's terminal)."""

    def __init__(self, view: LiveView) -> None:
        super().__init__()
        self.view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.view.log(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the node
            self.handleError(record)


def _path(event: NodeEvent) -> str:
    """ " over ethernet, 0.4 ms": the link class and round trip of the address in use."""
    if event.link is None:
        return ""
    return f" over {event.link}" + (f", {event.rtt_ms:g} ms" if event.rtt_ms is not None else "")


def describe(event: NodeEvent) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
    addresses, sources = ", ".join(event.addresses or []), ", ".join(event.sources or [])
    who = event.peer_id or addresses
    details = {
        "started": f"node {event.peer_id} listening on {addresses or event.port}, "
        f"namespace {event.namespace}",
        "peer_discovered": f"found {who} at {addresses} via {sources}",
        "peer_identified": f"{who} answers at {addresses}",
        "peer_updated": f"{who} now at {addresses} via {sources}",
        "peer_lost": f"lost {who}",
        "connected": f"connected {event.peer_id} at {event.address}{_path(event)} ({sources})",
        "path_changed": f"{event.peer_id} moved to {event.address}{_path(event)}, {event.reason}",
        "disconnected": f"disconnected {event.peer_id}: {event.reason}",
        "plugin_error": f"plugin {event.plugin} failing: {event.error}",
        "plugin_recovered": f"plugin {event.plugin} recovered",
        "lagged": f"missed {event.count} events (too slow to show them all)",
        "duplicate_identity": f"WARNING: {event.reason}",
        "stopped": "stopped",
    }
    return shown(f"{stamp} {details.get(event.event, event.event)}", MAX_LINE)
