"""Shared fixtures: the anyio backend, node fleets, and skips for what the machine cannot do."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exo_discovery_core import transport
from tests.support.cli import RunningNode
from tests.support.fake_install import STATIC_PLUGIN, env_with, install_plugin
from tests.support.nodes import NodeFleet, fleet

pytest_plugins = ["tests.support.netns_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def dial_only_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the network: an in-process node may dial loopback only.

    Hostile inputs (peer-exchange frames, Headscale answers) can name any address; the node
    would dial it for real. Tests in network namespaces run their nodes as separate processes,
    which this does not touch.
    """
    real_connect = transport.connect

    async def guarded(remote_host: Any, remote_port: int, **kwargs: Any) -> Any:
        try:
            loopback = ipaddress.ip_address(str(remote_host)).is_loopback
        except ValueError:
            loopback = str(remote_host) == "localhost"
        if not loopback:
            raise OSError(
                f"test guard: refusing to dial {remote_host}:{remote_port} (not loopback)"
            )
        return await real_connect(remote_host, remote_port, **kwargs)

    monkeypatch.setattr(transport, "connect", guarded)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFleet]:
    """Start real node processes; all are ended when the test ends, pass or fail."""
    with fleet(tmp_path / "nodes") as started:
        yield started


@pytest.fixture
def static_plugin_env(tmp_path: Path) -> dict[str, str]:
    """Env for node processes in which the test plugin ``static`` is installed."""
    site = tmp_path / "site"
    install_plugin(
        site,
        dist="exo-discovery-static",
        module="exo_static_plugin",
        source=STATIC_PLUGIN,
        entry="static",
    )
    return env_with(site)


@pytest.fixture
def running() -> Iterator[list[RunningNode]]:
    """``exo-discovery run`` processes a CLI test started; each is stopped when the test ends."""
    started: list[RunningNode] = []
    yield started
    for node in started:
        node.stop()
