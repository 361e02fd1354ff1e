"""Following tailscaled's IPN bus beside the core's poll loop, to wake it when the netmap changes.

The follower lives in a thread of its own, for two reasons. A task beside an async generator's
``yield`` needs a task group held open across the yield, which anyio forbids (the core offers no
place to run one). And cancelling an asyncio read of a unix socket while data arrives makes
anyio report ``InvalidStateError`` from the event loop. A thread blocked on the bus costs nothing,
is woken by shutting its socket down, and hands each change to the loop through anyio's token.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from .localapi import WATCH_MASK, BusReader, LocalAPIError

BUS_CHANGES = ("NetMap", "PeerChanges", "SelfChange", "State")
"""IPN bus fields after which the peer set may differ (Engine stats and the like do not)."""
JOIN_TIMEOUT = 5.0


class BusFollower:
    """Calls ``wake`` in the event loop on every IPN bus change; retries every ``retry`` s.

    A failing bus is logged once (until it works again) and leaves plain polling running; a
    daemon that cannot be reached at all is the poll's to report, so that is only logged at
    debug level here.
    """

    def __init__(
        self,
        socket: Callable[[], Path],
        *,
        wake: Callable[[], None],
        log: logging.Logger,
        retry: float,
        timeout: float = 5.0,
        mask: int = WATCH_MASK,
    ) -> None:
        self.socket = socket
        self.wake = wake
        self.log = log
        self.retry = retry
        self.timeout = timeout
        self.mask = mask
        self.failing: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._reader: BusReader | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start following, from the event loop whose ``wake`` is to be called."""
        token = anyio.lowlevel.current_token()
        self._thread = threading.Thread(
            target=self._run, args=(token,), name="exo-tailscale-ipn-bus", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop and wait for the thread (shielded: this runs while the plugin is closed)."""
        self._stop.set()
        with self._lock:
            reader = self._reader
        if reader is not None:
            reader.interrupt()
        thread, self._thread = self._thread, None
        if thread is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, JOIN_TIMEOUT)

    def _run(self, token: anyio.lowlevel.EventLoopToken) -> None:
        while not self._stop.is_set():
            reader = BusReader(self.socket(), timeout=self.timeout, mask=self.mask)
            with self._lock:
                if self._stop.is_set():
                    return
                self._reader = reader
            heard, quiet = False, False
            try:
                for note in reader.notes():
                    heard = True
                    if self.failing is not None:
                        self.log.info("following tailscaled's IPN bus again")
                        self.failing = None
                    if any(note.get(key) is not None for key in BUS_CHANGES):
                        self._wake(token)
                problem = "tailscaled closed the IPN bus stream"
            except LocalAPIError as exc:
                problem, quiet = str(exc), exc.unreachable and not heard
            except Exception as exc:  # noqa: BLE001 - must never end discovery; polling carries on
                problem = f"{type(exc).__name__}: {exc}"
            if self._stop.is_set():
                return
            if quiet:
                self.log.debug("IPN bus: %s", problem)
            elif self.failing is None:
                self.failing = problem
                self.log.warning(
                    "cannot follow tailscaled's IPN bus (%s); polling every %g s until it works",
                    problem,
                    self.retry,
                )
            if heard:
                self._wake(token)  # it worked, then stopped (tailscaled restarting?): read now
            self._stop.wait(self.retry)

    def _wake(self, token: anyio.lowlevel.EventLoopToken) -> None:
        try:
            anyio.from_thread.run_sync(self.wake, token=token)
        except anyio.RunFinishedError:  # the loop is gone: so is whoever wanted waking
            self._stop.set()
