"""The one polling loop every pull-style plugin uses (Headscale, a file, DNS, a LocalAPI).

It fetches on an interval, yields a result only when it changed, keeps the last good result
while the source fails (it simply yields nothing, and the node keeps what it has), backs off with
jitter after errors, logs a failure once rather than on every attempt, and re-fetches at once when
its :class:`Trigger` is set (a file changed, a watch stream said so).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Sized
from typing import TypeVar

import anyio
import anyio.lowlevel

from .backoff import Backoff
from .logonce import LogOnce

T = TypeVar("T")


class SourceError(Exception):
    """A source failed in a way worth one clear message.

    ``retry_after`` overrides the backoff (an API key that was rejected); ``fix`` says what a user
    can do, for ``doctor`` to show. ``idle`` means nothing is broken: what the source reads is not
    on this machine (yet), e.g. no tailscaled. The plugin shows as idle, not failing, and the
    source keeps being asked, so it is found when it appears.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        fix: str = "",
        idle: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.fix = fix
        self.idle = idle


class Trigger:
    """Wakes a poll loop early. ``set`` works from any task, and from any thread too (a blocking
    watch stream read in a worker thread)."""

    def __init__(self) -> None:
        self._pending = False
        self._event: anyio.Event | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._thread: int | None = None

    def set(self) -> None:
        """Wake the waiter. Safe before anyone waits, from any thread, and after the loop ended."""
        if self._token is None or threading.get_ident() == self._thread:
            self._set_here()
            return
        import anyio.from_thread  # here: only a set from another thread needs it (and its imports)

        with contextlib.suppress(anyio.RunFinishedError):  # the loop is gone: nobody to wake
            anyio.from_thread.run_sync(self._set_here, token=self._token)

    def _set_here(self) -> None:
        self._pending = True
        if self._event is not None:
            self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until ``set`` or ``timeout``; a ``set`` that came before the wait counts."""
        if self._token is None:  # learn the event loop here, on it, whichever thread made us
            self._token = anyio.lowlevel.current_token()
            self._thread = threading.get_ident()
        if not self._pending:
            self._event = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._event.wait()
        self._pending = False
        self._event = None


async def poll(
    fetch: Callable[[], Awaitable[T]],
    *,
    interval: float | Callable[[], float],
    log: logging.Logger,
    what: str,
    max_backoff: float = 60.0,
    timeout: float | None = None,
    trigger: Trigger | None = None,
    report_health: Callable[[bool, str], None] | None = None,
    report_idle: Callable[[str], None] | None = None,
) -> AsyncGenerator[T, None]:
    """Yield ``await fetch()`` when it differs from the last good one; forever, until closed.

    ``interval`` may be a function, asked before every wait, for a source that says when to ask
    again (an HTTP answer's refresh header). ``math.inf`` means nothing it reads can change:
    after a good fetch it is asked again only when ``trigger`` is set (after a failure it backs
    off as always, from ``max_backoff``). ``timeout`` bounds a fetch that hangs (default: the
    interval, at least 5 s). Errors other than cancellation are caught: a bug in ``fetch`` is
    logged with its traceback, once. Health goes to ``report_health`` (ok with what was fetched,
    or the failure), an idle :class:`SourceError` to ``report_idle`` (pass the context's).
    """
    interval_now = interval if callable(interval) else (lambda: interval)
    first = interval_now()
    every = first if math.isfinite(first) else max_backoff  # what the backoff starts from
    backoff = Backoff(initial=max(every, 0.05), maximum=max(max_backoff, every))
    trigger = trigger or Trigger()
    limit = timeout if timeout is not None else max(every, 5.0)
    said = LogOnce(log)
    last: T | None = None
    have_last = False
    failing: str | None = None
    seen = "ok"
    while True:
        problem: str | None = None
        retry_after: float | None = None
        idle = False
        try:
            with anyio.fail_after(limit):
                result = await fetch()
        except TimeoutError:
            problem = f"no answer within {limit:g} s"
        except SourceError as exc:
            problem, retry_after, idle = str(exc), exc.retry_after, exc.idle
        except Exception as exc:  # a bug in fetch must not end discovery
            problem = repr(exc)
            if said.changed(what, problem):
                log.exception("%s failed unexpectedly; will retry", what)
        else:
            if said.clear(what):
                log.info("%s is answering again", what)
            backoff.reset()
            delay = interval_now()  # asked after the fetch, which may have changed it
            seen = _what_was_seen(result, what)
            if not have_last or result != last:
                last, have_last = result, True
                yield result
        if problem is not None and idle:
            delay = interval_now()
            delay = delay if math.isfinite(delay) else every  # idle: it may appear, keep asking
            if said.changed(what, problem):
                log.info("%s: %s (idle; asking again every %g s)", what, problem, delay)
        elif problem is not None:
            if said.changed(what, problem):
                kept = "keeping the last good result; " if failing is None else ""
                log.warning("%s failed: %s (%sretrying with backoff)", what, problem, kept)
            else:
                log.debug("%s still failing: %s", what, problem)
            delay = backoff.next()  # the backoff grows even while retry_after overrides it
            if retry_after is not None:
                delay = retry_after
        failing = None if idle else problem
        if idle and problem is not None and report_idle is not None:
            report_idle(problem)
        elif report_health is not None:
            report_health(failing is None, failing or seen)
        await trigger.wait(delay)


def _what_was_seen(result: object, what: str) -> str:
    """``3 peers from <what>`` for a set of peers; ``ok`` for anything else."""
    if isinstance(result, Sized) and not isinstance(result, str | bytes):
        count = len(result)
        return f"{count} peer{'' if count == 1 else 's'} from {what}"
    return "ok"
