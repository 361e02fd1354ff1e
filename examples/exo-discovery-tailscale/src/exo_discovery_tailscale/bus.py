"""Following tailscaled's IPN bus beside the core's poll loop, to wake it when the netmap changes.

:meth:`BusFollower.run` is a background task of the plugin (``context.start_soon``), cancelled by
the core with the plugin's iterator. The bus itself is read with blocking I/O in a worker thread,
because cancelling an asyncio read of a unix socket while data arrives makes anyio (4.16) report
``InvalidStateError`` from the event loop. On cancellation the read is abandoned, its socket shut
down, and the thread waited for; it sets the poll's ``Trigger`` itself (``set`` is thread-safe).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread

from exo_discovery_core import Trigger

from .localapi import WATCH_MASK, BusReader, LocalAPIError

BUS_CHANGES = ("NetMap", "PeerChanges", "SelfChange", "State")
"""IPN bus fields after which the peer set may differ (Engine stats and the like do not)."""
THREAD_NAME = "exo-tailscale-ipn-bus"
"""The worker thread's name while it reads the bus (for thread dumps, and tests)."""
JOIN_TIMEOUT = 5.0


class BusFollower:
    """Sets ``trigger`` on every IPN bus change; retries every ``retry`` s.

    A failing bus is logged once (until it works again) and leaves plain polling running; a
    daemon that cannot be reached at all is the poll's to report, so that is only logged at
    debug level here.
    """

    def __init__(
        self,
        socket: Callable[[], Path],
        *,
        trigger: Trigger,
        log: logging.Logger,
        retry: float,
        timeout: float = 5.0,
        mask: int = WATCH_MASK,
    ) -> None:
        self.socket = socket
        self.trigger = trigger
        self.log = log
        self.retry = retry
        self.timeout = timeout
        self.mask = mask
        self.failing: str | None = None
        self._limiter = anyio.CapacityLimiter(1)  # not one of the shared pool's tokens for life

    async def run(self) -> None:
        """Follow the bus until cancelled; never raises (polling carries on without it)."""
        while True:
            reader = BusReader(self.socket(), timeout=self.timeout, mask=self.mask)
            heard, problem, quiet = await self._follow(reader)
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
                self.trigger.set()  # it worked, then stopped (tailscaled restarting?): read now
            await anyio.sleep(self.retry)

    async def _follow(self, reader: BusReader) -> tuple[bool, str, bool]:
        """One connection to the bus, read in a thread; shut down and waited for on cancel."""
        done = threading.Event()
        try:
            return await anyio.to_thread.run_sync(
                self._read, reader, done, abandon_on_cancel=True, limiter=self._limiter
            )
        finally:
            if not done.is_set():
                reader.interrupt()
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(done.wait, JOIN_TIMEOUT)

    def _read(self, reader: BusReader, done: threading.Event) -> tuple[bool, str, bool]:
        """In the worker thread: (heard anything, why it ended, whether to say so quietly)."""
        thread = threading.current_thread()
        name, thread.name = thread.name, THREAD_NAME
        heard = False
        try:
            for note in reader.notes():
                heard = True
                if self.failing is not None:
                    self.log.info("following tailscaled's IPN bus again")
                    self.failing = None
                if any(note.get(key) is not None for key in BUS_CHANGES):
                    self.trigger.set()
            return heard, "tailscaled closed the IPN bus stream", False
        except LocalAPIError as exc:
            return heard, str(exc), exc.unreachable and not heard
        except anyio.RunFinishedError:  # the loop is gone: so is whoever wanted waking
            return heard, "the event loop ended", True
        except Exception as exc:  # noqa: BLE001 - must never end discovery; polling carries on
            return heard, f"{type(exc).__name__}: {exc}", False
        finally:
            thread.name = name
            done.set()
