"""The core's helpers for plugin authors: poll, Trigger (also from threads), start_soon, replay."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from exo_discovery_core import DiscoveryContext, PeerCandidate, SourceError, Trigger, hookimpl, poll
from exo_discovery_core.testing import next_event, peer_sets, run_node

pytestmark = pytest.mark.anyio
log = logging.getLogger("test.poll")


async def test_poll_yields_changes_only_keeps_the_last_good_and_logs_a_failure_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    answers: list[Any] = [1, 1, SourceError("down"), SourceError("down"), SourceError("down"), 2]
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        answer = answers[min(calls, len(answers) - 1)]
        calls += 1
        if isinstance(answer, Exception):
            raise answer
        return int(answer)

    seen = []
    with anyio.fail_after(10):
        async for value in poll(fetch, interval=0.01, max_backoff=0.05, log=log, what="src"):
            seen.append(value)
            if value == 2:
                break
    assert seen == [1, 2]  # the repeat of 1 and the failures yield nothing
    assert caplog.text.count("src failed: down") == 1
    assert "src is answering again" in caplog.text


async def test_poll_bounds_a_fetch_that_hangs(caplog: pytest.LogCaptureFixture) -> None:
    hung = 0

    async def fetch() -> int:
        nonlocal hung
        hung += 1
        if hung == 1:
            await anyio.sleep_forever()
        return 7

    with anyio.fail_after(5):
        async for value in poll(fetch, interval=0.01, timeout=0.2, log=log, what="slow"):
            assert value == 7
            break
    assert "no answer within 0.2 s" in caplog.text


async def test_trigger_wakes_poll_at_once_even_from_another_thread() -> None:
    trigger = Trigger()
    calls: list[float] = []

    async def fetch() -> int:
        calls.append(time.monotonic())
        return len(calls)

    def other_thread() -> None:
        time.sleep(0.2)
        trigger.set()

    thread = threading.Thread(target=other_thread)
    with anyio.fail_after(5):
        stream = poll(fetch, interval=60, log=log, what="watched", trigger=trigger)
        assert await stream.__anext__() == 1
        thread.start()
        assert await stream.__anext__() == 2  # not after 60 s: the thread's set woke it
        await stream.aclose()
    thread.join()
    assert calls[1] - calls[0] < 2


class Watching:
    """A plugin with a watch task beside its poll, the way the guide says to write one."""

    def __init__(self) -> None:
        self.cancelled = anyio.Event()
        self.value = 0

    @hookimpl
    async def discover_peers(
        self, context: DiscoveryContext[Any]
    ) -> AsyncIterator[list[PeerCandidate]]:
        trigger = Trigger()

        async def watch() -> None:
            try:
                for port in (1001, 1002):
                    await anyio.sleep(0.1)
                    self.value = port
                    trigger.set()
                await anyio.sleep_forever()
            finally:
                self.cancelled.set()

        async def fetch() -> list[PeerCandidate]:
            return [PeerCandidate.at("127.0.0.1", self.value)] if self.value else []

        context.start_soon(watch)
        async for peers in poll(fetch, interval=60, log=context.log, what="w", trigger=trigger):
            yield peers


async def test_start_soon_runs_a_watcher_beside_the_iterator_and_cancels_it_after() -> None:
    plugin = Watching()
    sets = await peer_sets(plugin, count=3, timeout=5)
    assert [sorted(c.addresses[0].port for c in s) for s in sets] == [[], [1001], [1002]]
    with anyio.fail_after(10):
        await plugin.cancelled.wait()


async def test_a_failing_background_task_fails_the_plugin_by_name_and_it_restarts() -> None:
    runs = 0

    class Breaks:
        @hookimpl
        async def discover_peers(
            self, context: DiscoveryContext[Any]
        ) -> AsyncIterator[list[PeerCandidate]]:
            nonlocal runs
            runs += 1

            async def watch() -> None:
                raise ConnectionError("watch stream broke")

            context.start_soon(watch)
            yield [PeerCandidate.at("127.0.0.1", 9)]
            await anyio.sleep_forever()

    node_config = {"plugin_restart_max": 0.3, "connect": False}
    async with (
        run_node({"breaks": Breaks()}, node=node_config) as node,
        node.events(replay=True) as events,
    ):
        error = await next_event(events, "plugin_error", timeout=5)
        assert error.error == "ConnectionError: watch stream broke"
        await next_event(events, "plugin_recovered", timeout=5)  # restarted: it yielded again
    assert runs >= 2


async def test_events_replay_what_happened_before_subscribing() -> None:
    class Once:
        @hookimpl
        async def discover_peers(self) -> AsyncIterator[list[PeerCandidate]]:
            yield [PeerCandidate.at("127.0.0.1", 5)]

    async with run_node({"once": Once()}, node={"connect": False}) as node:
        async with node.events(replay=True) as first:
            await next_event(first, "peer_discovered", timeout=5)  # it has happened now
        async with node.events(replay=True) as events:
            assert (await next_event(events, "started", timeout=10)).peer_id == node.peer_id
            found = await next_event(events, "peer_discovered", timeout=10)
            assert found.addresses == ["127.0.0.1:5"]


async def test_an_infinite_interval_asks_again_only_when_triggered() -> None:
    """A source that nothing can change (literal addresses) is not woken up to be asked again."""
    waits: list[float] = []

    class Recording(Trigger):
        async def wait(self, timeout: float) -> None:
            waits.append(timeout)
            await super().wait(timeout)

    trigger = Recording()
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    with anyio.fail_after(5):
        stream = poll(fetch, interval=math.inf, log=log, what="static", trigger=trigger)
        assert await stream.__anext__() == 1
        trigger.set()
        assert await stream.__anext__() == 2
        await stream.aclose()
    assert waits == [math.inf], "between the two fetches it slept until the trigger"
