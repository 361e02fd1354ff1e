"""Shared fixtures: the anyio backend, node fleets, and skips for what the machine cannot do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_install import STATIC_PLUGIN, env_with, install_plugin
from tests.support.nodes import NodeFleet, fleet

pytest_plugins = ["tests.support.netns_fixtures"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
