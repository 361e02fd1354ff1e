"""The mdns plugin: announce this node with DNS-SD and report the other nodes of its namespace.

Only the hooks are here: zeroconf and the run (:mod:`.run`) are imported when discovery or the
doctor starts, so loading the plugin (``exo-discovery plugins``, a node where mdns is idle) costs
no zeroconf import.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import TYPE_CHECKING

from exo_discovery_core import CheckResult, DiscoveryContext, PeerSets, hookimpl

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .config import MdnsConfig


@hookimpl
def config_model() -> type[BaseModel]:
    """The ``[plugins.mdns]`` table: interfaces, IP versions, service type, instance name."""
    from .config import MdnsConfig

    return MdnsConfig


@hookimpl
async def discover_peers(context: DiscoveryContext[MdnsConfig]) -> PeerSets:
    """Announce this node and yield the peers of its namespace on the LAN whenever they change."""
    from .run import MdnsRun

    async with aclosing(MdnsRun(context).run()) as sets:
        async for peers in sets:
            yield peers


@hookimpl
async def doctor(context: DiscoveryContext[MdnsConfig]) -> list[CheckResult]:
    """Interfaces with multicast, UDP 5353 shareable, our own query heard back."""
    from . import checks

    return await checks.run_checks(context)
