"""Runs one plugin's ``discover_peers`` and keeps it running: the isolation of every plugin.

A plugin that raises is logged by name and called again after a backoff with jitter; its last
set stays in the peer table until the TTL (``PeerTable.source_failed``). The iterator runs on the
node's event loop. An async generator function is called there too (calling one runs none of its
code); a plain function, which may block before it returns, is called in a worker thread with a
deadline, so a plugin that blocks there cannot stall the node.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio

from .backoff import Backoff
from .logonce import LogOnce
from .models import BackgroundTask, DiscoveryContext, PeerCandidate
from .plugins import PluginHost
from .text import logger

HOOK_CALL_TIMEOUT = 10.0

log = logger("exo_discovery.supervisor")


class PluginMisbehaved(Exception):
    """A plugin broke the hook contract (returned or yielded the wrong thing)."""


def _as_set(plugin: str, item: Any) -> frozenset[PeerCandidate]:
    if isinstance(item, PeerCandidate) or not isinstance(item, Iterable):
        raise PluginMisbehaved(
            f"plugin {plugin!r} yielded {type(item).__name__}, not a set of peers"
        )
    candidates = frozenset(item)
    for candidate in candidates:
        if not isinstance(candidate, PeerCandidate):
            raise PluginMisbehaved(
                f"plugin {plugin!r} yielded a {type(candidate).__name__} among its peers"
            )
    return candidates


async def supervise(
    host: PluginHost,
    context: DiscoveryContext[Any],
    *,
    on_set: Callable[[str, frozenset[PeerCandidate]], None],
    on_error: Callable[[str, str], None],
    on_recovered: Callable[[str], None],
    restart_max: float,
) -> None:
    """Drive ``context.plugin_name``'s peer sets into ``on_set`` until cancelled."""
    name = context.plugin_name
    backoff = Backoff(initial=0.5, maximum=restart_max)
    failing = False
    said = LogOnce(log)
    while True:
        try:
            async with running(host, context) as stream:
                if stream is None:
                    return
                async for item in stream:
                    on_set(name, _as_set(name, item))
                    if failing:
                        failing = False
                        backoff.reset()
                        on_recovered(name)
            context.log.debug("plugin %r finished; its last peers stay", name)
            return
        except Exception as caught:
            exc = _unwrap(caught)
            failing = True
            delay = backoff.next()
            message = f"{type(exc).__name__}: {exc}"
            repeated = not said.changed(name, message)
            log.log(
                logging.INFO if repeated else logging.ERROR,
                "plugin %r failed%s: %s; restarting in %.1f s",
                name,
                " again" if repeated else "",
                message,
                delay,
                exc_info=not repeated and not isinstance(exc, PluginMisbehaved | TimeoutError),
            )
            on_error(name, message)
            await anyio.sleep(delay)


@asynccontextmanager
async def running(host: PluginHost, context: DiscoveryContext[Any]) -> AsyncIterator[Any]:
    """A plugin's iterator (or None) with its background tasks, closed and cancelled on exit."""
    async with anyio.create_task_group() as background:

        def start_soon(task: BackgroundTask) -> None:
            background.start_soon(task)

        run_context = dataclasses.replace(context, start_soon=start_soon)
        try:
            stream = await _call_hook(host, context.plugin_name, run_context)
            if stream is None:
                how = context.how_to_set()
                context.log.info(
                    "plugin %r is idle%s",
                    context.plugin_name,
                    f"; to use it, {how}" if how else " (discover_peers returned None)",
                )
                context.report_idle(f"to use it, {how}" if how else "nothing to do here")
                yield None
            else:
                async with aclosing(stream):
                    yield stream
        finally:
            background.cancel_scope.cancel()


def _unwrap(exc: Exception) -> Exception:
    """The one real error inside task-group wrappers, for a message that says what happened."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _call_hook(host: PluginHost, name: str, context: DiscoveryContext[Any]) -> Any:
    """The plugin's async iterator (or None): an async generator made on the event loop, or what
    a plain function returns, called in a worker thread so a blocking one cannot stall us."""

    def call() -> Any:
        return host.call(name, "discover_peers", context=context)

    if host.is_async_generator(name, "discover_peers"):
        return call()
    with anyio.fail_after(HOOK_CALL_TIMEOUT):
        result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    if result is not None and not hasattr(result, "__anext__"):
        raise PluginMisbehaved(
            f"plugin {name!r}: discover_peers returned {type(result).__name__}, "
            "not an async iterator (write it as an `async def` generator)"
        )
    return result
