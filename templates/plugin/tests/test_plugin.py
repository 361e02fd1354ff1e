"""The plugin's hooks, driven by the core's testing helper as the node drives them."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from exo_discovery_core import PeerCandidate
from exo_discovery_core.testing import make_context, next_event, peer_sets, run_node
from exo_discovery_template import plugin

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_reports_the_peers_in_the_file(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text('["127.0.0.1:5000", "[::1]:5001"]')
    sets = await peer_sets(plugin, {"path": str(peers), "interval": 0.05}, count=2)
    assert sets[0] == frozenset()
    assert sets[1] == {PeerCandidate.at("127.0.0.1", 5000), PeerCandidate.at("::1", 5001)}


async def test_a_broken_file_keeps_the_last_good_peers(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text('["127.0.0.1:5000"]')
    context = make_context(plugin, {"path": str(peers), "interval": 0.05})
    seen = []
    async with anyio.create_task_group() as tg:

        async def edit() -> None:
            await anyio.sleep(0.3)
            peers.write_text('["127.0.0.1:5000", oops')  # a broken edit: nothing new is yielded
            await anyio.sleep(0.3)
            peers.write_text('["127.0.0.1:5002"]')

        tg.start_soon(edit)
        seen = await peer_sets(plugin, context=context, count=3, timeout=5)
    assert [sorted(c.addresses[0].port for c in s) for s in seen] == [[], [5000], [5002]]


async def test_a_node_connects_to_a_peer_from_the_file(tmp_path: Path) -> None:
    async with run_node() as target:
        peers = tmp_path / "peers.json"
        peers.write_text(f'["127.0.0.1:{target.port}"]')
        config = {"template": {"path": str(peers), "interval": 0.1}}
        async with (
            run_node({"template": plugin}, plugin_config=config) as node,
            node.events() as events,
        ):
            connected = await next_event(events, "connected", timeout=10)
            assert connected.peer_id == target.peer_id
            assert connected.sources == ["template"]


def test_doctor_explains_a_missing_file(tmp_path: Path) -> None:
    context = make_context(plugin, {"path": str(tmp_path / "missing.json")})
    [check] = plugin.doctor(context)
    assert not check.ok and "missing.json" in check.fix
