"""Hostile Headscale answers: spec-valid node lists mutated, through the parser and a real poll.

Bases are the answers each version (0.22.3 ... 0.29.2) sends, built by the fake server from that
version's swagger (``../shared/headscale-openapi``) and checked against it here. Hypothesis drops
fields, retypes them, grows the list, truncates or splices the bytes. Through ``parse_node_list``
and the plugin's selection each ends in candidates or a ``HeadscaleError`` (kind ``shape``), never
another exception. Through a real poll against the fake server, the plugin yields what the
answer holds when it is a node list and otherwise keeps the last good set.

Cases per target: ``CASES_PER_TARGET`` (200) for the parser, ``POLL_CASES`` (25) for the poll,
``BUG_CASES`` (10) for the regression target of a bug this suite found (fixed).
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import aclosing
from typing import Any, Literal

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import exo_discovery_headscale.api as headscale_api
from exo_discovery_core import PeerCandidate
from exo_discovery_core.testing import make_context, node_info
from exo_discovery_headscale.api import HeadscaleError, WireNode, parse_node_list
from exo_discovery_headscale.config import HeadscaleConfig
from exo_discovery_headscale.plugin import HeadscalePlugin, Selector
from tests.support.fake_headscale import (
    SPEC_DIR,
    VERSIONS,
    FakeNode,
    is_machine_api,
    list_answer,
    list_definition_name,
    load_spec,
    validate,
)
from tests.support.hostile import ScriptedHeadscale

CASES_PER_TARGET = 200
POLL_CASES = 25
BUG_CASES = 10
KEY = "hskey-hostile-0000"
ME = ipaddress.ip_address("100.64.0.1")
NODE = node_info(interfaces=[str(ME)], namespace="exo")
CONFIG = HeadscaleConfig(api_url="http://127.0.0.1:1", api_key=KEY)

pytestmark = pytest.mark.skipif(not SPEC_DIR.is_dir(), reason=f"no Headscale specs at {SPEC_DIR}")


def _fleet() -> list[FakeNode]:
    return [
        FakeNode.numbered(1, tags=("tag:exo",)),  # this node (100.64.0.1)
        FakeNode.numbered(2, tags=("tag:exo",)),
        FakeNode.numbered(3, tags=("tag:exo", "tag:exo-port-6000"), valid_tags=("tag:x",)),
        FakeNode.numbered(4, tags=("tag:exo",), online=False),
        FakeNode.numbered(5, tags=("tag:other",)),
    ]


def _base(version: str) -> dict[str, Any]:
    answer = list_answer(version, _fleet())
    spec = load_spec(version)
    schema = spec["definitions"][list_definition_name(version)]
    assert validate(spec, schema, answer) == [], version
    return answer


BASES = {version: _base(version) for version in VERSIONS} if SPEC_DIR.is_dir() else {}

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
# port tags with ASCII text only: a Unicode digit is bug B11 (fixed) (its own target)
TAGS = st.lists(
    st.sampled_from(
        [
            "tag:exo",
            "tag:exo-port-1",
            "tag:exo-port-0",
            "tag:exo-port-99999",
            "tag:exo_peer_id=bad",
            "tag:exo_port=7",
        ]
    )
    | st.text(alphabet=st.characters(max_codepoint=127), max_size=20).map(
        lambda t: "tag:exo-port-" + t
    )
    | st.text(max_size=20).filter(lambda t: not t.startswith(("tag:exo-port-", "tag:exo_port="))),
    max_size=4,
)
IPS = st.lists(
    st.sampled_from(
        [
            "100.64.0.1",
            "100.64.0.9",
            "fd7a:115c:a1e0::9",
            "fe80::1%eth0",
            "::",
            "0.0.0.0",
            "300.1.1.1",
            "",
            "127.0.0.1",
        ]
    )
    | st.text(max_size=12),
    max_size=4,
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    version = draw(st.sampled_from(VERSIONS))
    answer = json.loads(json.dumps(BASES[version]))
    key = "machines" if is_machine_api(version) else "nodes"
    nodes: list[Any] = answer[key]
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["drop", "retype", "tags", "ips", "grow", "junk_node", "top"]))
        if not nodes:
            break
        index = draw(st.integers(0, len(nodes) - 1))
        node = nodes[index]
        if op == "drop" and isinstance(node, dict) and node:
            node.pop(draw(st.sampled_from(sorted(node))))
        elif op == "retype" and isinstance(node, dict) and node:
            node[draw(st.sampled_from(sorted(node)))] = draw(
                JSON | st.sampled_from([2**64, -1, "18446744073709551616", "1e3", "x" * 5000])
            )
        elif op == "tags" and isinstance(node, dict):
            node[draw(st.sampled_from(["tags", "forcedTags", "validTags", "invalidTags"]))] = draw(
                TAGS
            )
        elif op == "ips" and isinstance(node, dict):
            node["ipAddresses"] = draw(IPS)
        elif op == "grow":
            nodes.extend([node] * draw(st.integers(1, 3000)))
        elif op == "junk_node":
            nodes[index] = draw(JSON)
        else:
            answer = draw(JSON | st.just({key: draw(JSON)}) | st.just({}))
            break
    body = json.dumps(answer).encode()
    cut = draw(st.sampled_from(["none", "none", "truncate", "splice"]))
    if cut == "truncate":
        body = body[: draw(st.integers(0, len(body)))]
    elif cut == "splice":
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
    return ("machine" if is_machine_api(version) else "node"), body


def select(body: bytes, api: Any) -> frozenset[PeerCandidate]:
    """What the plugin makes of one answer; HeadscaleError if it is not a node list."""
    nodes = parse_node_list(body, api)
    own = frozenset({str(ME)})
    return Selector(CONFIG, NODE).select(nodes, own)


@settings(
    max_examples=CASES_PER_TARGET,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated())
def test_mutated_answers_parse_or_fail_cleanly(case: tuple[str, bytes]) -> None:
    """Cases: CASES_PER_TARGET (200)."""
    api, body = case
    try:
        peers = select(body, api)
    except HeadscaleError as exc:
        assert exc.kind == "shape" and exc.fix
        assert len(str(exc)) < 1000  # one line, the answer is not echoed
        return
    for peer in peers:
        assert all(a.ip is not None for a in peer.addresses)


# -- a real poll against the fake server --------------------------------------------------------


class Driver:
    """``discover_peers`` of a real plugin in a background loop, collecting every set it yields.
    Every wait on it fails with what the plugin raised, if it raised: a plugin that died is
    the test's failure, not a wait that runs out."""

    def __init__(
        self, fake: ScriptedHeadscale, portal: BlockingPortal, *, timeout: float = 1.0
    ) -> None:
        self.fake = fake
        self.sets: list[frozenset[PeerCandidate]] = []
        self.plugin = HeadscalePlugin()
        config = {
            "api_url": fake.url,
            "api_key": fake.key,
            "poll_interval": 0.05,
            "timeout": timeout,
        }
        self.context = make_context(self.plugin, config, name="headscale", node=NODE)
        # the portal's future is done the moment it is cancelled, and forgets what the task
        # raises after: the task's own end, and what it ended with, are kept here
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self.future: Future[None] = portal.start_task_soon(self.run)

    async def run(self) -> None:
        try:
            stream = self.plugin.discover_peers(self.context)
            assert stream is not None
            async with aclosing(stream):  # type: ignore[type-var]
                async for item in stream:
                    self.sets.append(frozenset(item))
        except anyio.get_cancelled_exc_class():
            raise
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.ended.set()

    def running(self) -> None:
        """Raise what ended ``discover_peers`` if it ended (it polls until cancelled)."""
        if self.ended.is_set():
            raise AssertionError("discover_peers ended") from self.error

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        wait_for(predicate, timeout, self.running)

    def after_two_requests(self, body: bytes | None) -> None:
        """Serve ``body`` and return once one request got it and the plugin has handled it."""
        self.fake.body = body
        start = len(self.fake.requests)
        self.wait_for(lambda: len(self.fake.requests) >= start + 2, 10.0)

    def stop(self) -> None:
        """Cancel the poll: it ends within 3 s, by that cancellation, raising nothing else."""
        self.running()
        self.future.cancel()
        wait_for(self.ended.is_set, 3.0)
        assert self.error is None, f"discover_peers ended with {self.error!r}"


def wait_for(
    predicate: Callable[[], bool], timeout: float, running: Callable[[], None] = lambda: None
) -> None:
    """Until ``predicate`` holds (``running`` raising if what should make it hold has died)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        running()
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_poll_keeps_the_last_good_set() -> None:
    """Cases: POLL_CASES (25) mutated answers served by the fake server to a polling plugin."""
    good = json.dumps(list_answer("0.29.2", _fleet())).encode()
    good_set = select(good, "node")
    assert len(good_set) == 2
    with (
        ScriptedHeadscale(version="0.29.2", key=KEY, fault="huge", body=good) as fake,
        start_blocking_portal("asyncio") as portal,
    ):
        driver = Driver(fake, portal)
        try:
            driver.wait_for(lambda: bool(driver.sets), 10.0)
            assert driver.sets == [good_set]

            @settings(
                max_examples=POLL_CASES,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(mutated().filter(lambda case: case[0] == "node"))
            def target(case: tuple[str, bytes]) -> None:
                _, body = case
                try:
                    expected = select(body, "node")
                except HeadscaleError:
                    expected = good_set  # not a node list: the last good set stays
                driver.after_two_requests(body)
                assert driver.sets[-1] == expected
                driver.after_two_requests(good)
                assert driver.sets[-1] == good_set

            target()
            driver.stop()
        finally:
            driver.future.cancel()


B11 = (
    "B11: Selector._port (headscale plugin.py:233) tests str.isdigit(), True for '²' which int() "
    "rejects: one node tagged tag:exo-port-² makes every round raise ValueError (poll logs "
    "'failed unexpectedly'), so no peer set is produced at all while that node exists; "
    "use text.isascii() and text.isdigit()"
)


@settings(max_examples=BUG_CASES, deadline=None, phases=[Phase.generate], database=None)
@given(st.text(alphabet=st.sampled_from("²³¹①"), min_size=1, max_size=3))
def test_fixed_bug_unicode_digit_port_tag(port: str) -> None:
    """Cases: BUG_CASES (10)."""

    def answer(*tags: str) -> bytes:
        nodes = [*_fleet(), FakeNode.numbered(7, tags=("tag:exo", *tags))]
        return json.dumps(list_answer("0.29.2", nodes)).encode()

    # the bad port tag is as none (the default port), every node selected
    assert select(answer(f"tag:exo-port-{port}"), "node") == select(answer(), "node")


def test_ten_megabytes_and_a_server_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10 MB answer and a hanging server: the plugin keeps its peers, the loop stays responsive
    (no stretch of over 1 s of its CPU without a turn for others) and it stops at once when closed.

    The stall is counted in the loop thread's own CPU time (``time.thread_time``): that is what
    the plugin's synchronous work (reading, parsing, selecting 13,000 nodes) costs the loop. Wall
    time between turns also counts a loaded machine's scheduler and the fake server, a thread of
    this process building and writing 10 MB under the same GIL: at load 20 it passed 1 s with
    no parse at all. The answer is built before the watch starts and the client given 5 s, so
    the 10 MB arrive and are parsed on a busy machine too (a spy on the parse checks they were).
    """
    parsed: list[int] = []  # node counts of the lists the plugin parsed

    def spy(body: bytes, api: Literal["node", "machine"] = "node") -> list[WireNode]:
        nodes = parse_node_list(body, api)
        parsed.append(len(nodes))
        return nodes

    monkeypatch.setattr(headscale_api, "parse_node_list", spy)
    with (
        ScriptedHeadscale(version="0.29.2", key=KEY, nodes=_fleet(), fault=None) as fake,
        start_blocking_portal("asyncio") as portal,
    ):
        fake.body = fake.huge_answer()  # 10 MB: the real nodes plus offline filler
        huge = len(json.loads(fake.body)["nodes"])
        driver = Driver(fake, portal, timeout=5.0)
        stall = [0.0]  # the most CPU the loop's thread spent between two turns of the watcher

        async def watch_loop() -> None:
            while True:
                before = time.thread_time()
                await anyio.sleep(0.01)
                stall[0] = max(stall[0], time.thread_time() - before)

        watcher = portal.start_task_soon(watch_loop)
        try:
            driver.wait_for(lambda: bool(driver.sets), 10.0)
            first = driver.sets[-1]
            assert len(first) == 2
            fake.fault = "huge"
            driver.wait_for(lambda: huge in parsed, 30.0)
            start = len(fake.requests)  # the next request: the round with the 10 MB has ended
            driver.wait_for(lambda: len(fake.requests) > start, 20.0)
            fake.fault = "hang"
            start = len(fake.requests)
            driver.wait_for(lambda: len(fake.requests) >= start + 2, 20.0)
            assert driver.sets == [first]
            assert stall[0] < 1.0, f"the event loop ran {stall[0]:.2f} s of CPU without a turn"
            assert not watcher.done(), watcher  # it sleeps until cancelled
            driver.stop()  # at once when closed: within 3 s, by the cancellation
        finally:
            driver.future.cancel()
            watcher.cancel()
