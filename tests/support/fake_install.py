"""Install a throwaway plugin distribution the way pip does: a module and a ``.dist-info`` with
an ``entry_points.txt``, in a directory that a node process gets on its ``PYTHONPATH``.

The node then finds the plugin through ``importlib.metadata`` entry points exactly as it finds
one that ``pip install`` put in site-packages.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path


def install_plugin(
    site: Path,
    *,
    dist: str,
    module: str,
    source: str,
    entry: str,
    version: str = "0.1.0",
    target: str | None = None,
) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[exo_discovery]\n{entry} = {target or module}\n")


def env_with(site: Path) -> dict[str, str]:
    current = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{site}{os.pathsep}{current}" if current else str(site)}


STATIC_PLUGIN = '''
"""A test plugin: yields the peers in its config (host:port), optionally failing on purpose."""
import os
import anyio
from pydantic import BaseModel, ConfigDict
from exo_discovery_core import PeerCandidate, hookimpl, option

class StaticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    peers: list[str] = option([], help="host:port list", flag="--static-peers", env="STATIC_PEERS")
    fail_after_first: bool = option(False, help="raise after the first set, every time")
    marker: str = option("", help="file to touch on import", env="STATIC_MARKER")

if os.environ.get("STATIC_MARKER"):
    open(os.environ["STATIC_MARKER"], "a").write("imported\\n")

@hookimpl
def config_model():
    return StaticConfig

@hookimpl
async def discover_peers(context):
    peers = []
    for entry in context.config.peers:
        host, _, port = entry.rpartition(":")
        peers.append(PeerCandidate.at(host.strip("[]"), int(port)))
    yield peers
    if context.config.fail_after_first:
        raise RuntimeError("static plugin failing on purpose")
    await anyio.sleep_forever()

@hookimpl
def on_connection(event, context):
    context.log.warning("on_connection %s %s", event.peer_id, event.state.name)
'''
