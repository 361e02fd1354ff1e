"""The hook contract, one hookspec at a time: every hookspec has tests named ``test_hook_<name>``
(datasette's habit), and ``test_every_hookspec_has_a_test`` fails when one has none."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from pydantic import BaseModel, ConfigDict

from exo_discovery_core import (
    CheckResult,
    ConnectionEvent,
    DiscoveryContext,
    PeerCandidate,
    PeerSets,
    hookimpl,
    option,
)
from exo_discovery_core.config import ConfigSource
from exo_discovery_core.doctor import run_doctor
from exo_discovery_core.plugins import PluginHost
from exo_discovery_core.testing import make_context, next_event, peer_sets, run_node
from tests.support.static import Static

pytestmark = pytest.mark.anyio
TESTS = Path(__file__).parent


def test_every_hookspec_has_a_test() -> None:
    """A new hookspec without a ``test_hook_<name>`` test fails the suite."""
    text = "\n".join(path.read_text() for path in TESTS.glob("test_*.py"))
    tested = set(re.findall(r"^(?:async )?def test_hook_(\w+)", text, re.MULTILINE))
    missing = [
        name
        for name in PluginHost().hook_names()
        if not any(t == name or t.startswith(f"{name}_") for t in tested)
    ]
    assert not missing, f"hookspecs without a test_hook_<name> test: {missing}"


# -- config_model ------------------------------------------------------------------------------


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = option(None, help="Where", flag="--demo-url", env="DEMO_URL", needed=True)
    every: float = option(5.0, help="Seconds between reads", gt=0)


class Demo:
    @hookimpl
    def config_model(self) -> type[BaseModel]:
        return DemoConfig

    @hookimpl
    def discover_peers(self, context: DiscoveryContext[DemoConfig]) -> PeerSets | None:
        if context.config.url is None:
            return None
        return self._run()

    async def _run(self) -> PeerSets:
        yield [PeerCandidate.at("127.0.0.1", 9)]


def test_hook_config_model_validates_the_table_env_and_flags() -> None:
    context = make_context(Demo(), {"every": 2}, env={"DEMO_URL": "from-env"})
    assert isinstance(context.config, DemoConfig)
    assert (context.config.url, context.config.every) == ("from-env", 2.0)
    flagged = make_context(Demo(), {}, env={"DEMO_URL": ""}, flags={"--demo-url": "from-flag"})
    assert flagged.config.url == "from-flag"
    unset = make_context(Demo(), {"url": "file"}, env={"DEMO_URL": "  "})  # empty: unset
    assert unset.config.url == "file"


def test_hook_config_model_must_return_a_model_class() -> None:
    class Wrong:
        @hookimpl
        def config_model(self) -> object:
            return {"url": str}

    host = PluginHost()
    host.register("wrong", Wrong())
    with pytest.raises(TypeError, match="plugin 'wrong': config_model must return"):
        host.config_model("wrong")


# -- discover_peers ----------------------------------------------------------------------------


async def test_hook_discover_peers_async_generator_runs_on_the_event_loop() -> None:
    """Its body may make event-loop objects: it is called and iterated on the node's loop."""
    seen: dict[str, Any] = {}

    class OnLoop:
        @hookimpl
        async def discover_peers(self) -> PeerSets:
            seen["thread"] = threading.get_ident()
            seen["loop"] = asyncio.get_running_loop()
            event = anyio.Event()  # needs the running loop: fails in a worker thread
            event.set()
            await event.wait()
            yield [PeerCandidate.at("127.0.0.1", 9)]

    [peers] = await peer_sets(OnLoop())
    assert [p.addresses[0].port for p in peers] == [9]
    assert seen == {"thread": threading.get_ident(), "loop": asyncio.get_running_loop()}


async def test_hook_discover_peers_contract_is_checked_at_registration() -> None:
    class ReturnsInstead:
        @hookimpl
        async def discover_peers(self) -> list[PeerCandidate]:
            return []

    class PlainGenerator:
        @hookimpl
        def discover_peers(self) -> Any:
            yield []

    for name, plugin, why in (
        ("coro", ReturnsInstead(), "`async def` that returns instead of yielding"),
        ("gen", PlainGenerator(), "plain generator"),
    ):
        host = PluginHost()
        with pytest.raises(ValueError, match=re.escape(f"plugin {name!r}: discover_peers")) as e:
            host.register(name, plugin)
        assert why in str(e.value)
        assert host.loaded() == []  # left out, never run


async def test_hook_discover_peers_none_is_idle_and_says_how_to_configure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    assert await peer_sets(Demo(), {}, name="demo") == []
    [line] = [r.getMessage() for r in caplog.records if "idle" in r.getMessage()]
    assert line == (
        "plugin 'demo' is idle; to use it, set url ([plugins.demo] url, --demo-url, env DEMO_URL)"
        ": Where"
    )
    assert await peer_sets(Demo(), {"url": "x"}, name="demo") != []


# -- on_connection -----------------------------------------------------------------------------


async def test_hook_on_connection_is_called_sync_or_async_with_the_connection() -> None:
    heard: list[ConnectionEvent] = []
    first = anyio.Event()

    class Listener:
        @hookimpl
        def on_connection(self, event: ConnectionEvent) -> None:
            heard.append(event)
            first.set()

    async with run_node() as target:
        plugins = {"static": Static(PeerCandidate.at("127.0.0.1", target.port)), "l": Listener()}
        async with run_node(plugins) as node, node.events() as events:
            await next_event(events, "connected", timeout=10)
            with anyio.fail_after(5):
                await first.wait()
    static = plugins["static"]
    assert isinstance(static, Static)
    for events_seen in (heard, static.connections):
        assert events_seen[0].connected and events_seen[0].peer_id == target.peer_id
        assert events_seen[0].sources == frozenset({"static"})


# -- doctor ------------------------------------------------------------------------------------


async def test_hook_doctor_sync_async_and_broken_checks_are_all_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Sync:
        @hookimpl
        def doctor(self) -> list[CheckResult]:
            return [CheckResult(name="sync check", ok=True, detail="fine")]

    class Async:
        @hookimpl
        async def doctor(self, context: DiscoveryContext[Any]) -> list[CheckResult]:
            await anyio.lowlevel.checkpoint()
            return [CheckResult(name=f"{context.plugin_name} check", ok=False, fix="do X")]

    class Broken:
        @hookimpl
        def doctor(self) -> list[CheckResult]:
            raise RuntimeError("bug in the check")

    host = PluginHost()
    for name, plugin in (("a-sync", Sync()), ("b-async", Async()), ("c-broken", Broken())):
        host.register(name, plugin)
    source = ConfigSource(file_data={"node": {"state_dir": str(tmp_path)}}, env={})
    assert await run_doctor(host, source) is False
    out = capsys.readouterr().out
    assert "✓ sync check: fine" in out
    assert "✗ b-async check" in out and "fix: do X" in out
    assert "c-broken doctor: RuntimeError: bug in the check" in out
