"""The hook contract between the node and its discovery plugins: everything a plugin implements.

A plugin is a module or object with functions marked ``@hookimpl``, published under the entry-point
group ``exo_discovery``; the entry-point name is the plugin's name (``[plugins.<name>]`` in the
config file). An implementation may take fewer arguments than its spec, so specs can grow.
Only ``discover_peers`` is needed; the rest are optional.
"""

from __future__ import annotations

from collections.abc import Awaitable

import pluggy
from pydantic import BaseModel

from .models import CheckResult, ConnectionEvent, DiscoveryContext, PeerSets

PROJECT = "exo_discovery"
ENTRY_POINT_GROUP = "exo_discovery"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT",
    "PeerSets",
    "config_model",
    "discover_peers",
    "doctor",
    "hookimpl",
    "hookspec",
    "on_connection",
]


@hookspec
def config_model() -> type[BaseModel]:  # type: ignore[empty-body]
    """The pydantic model of this plugin's ``[plugins.<name>]`` table (fields made with ``option``)."""


@hookspec
def discover_peers(context: DiscoveryContext[BaseModel]) -> PeerSets | None:
    """An async iterator of peer sets: each item is every peer this plugin sees now.

    An ``async def`` generator (called and iterated on the node's event loop), or a plain function
    returning one, or None to stay idle (e.g. not configured); checked at registration. The node
    drives it in a task of its own and diffs the sets; a peer missing from the next set is gone.
    Yield an empty set first if nothing is known yet. Clean up (goodbyes, sockets) in a
    ``finally``: the node closes the iterator on stop. If it raises, the node logs it, keeps the
    last set until the peer TTL, and calls the hook again after a backoff. Use
    ``exo_discovery_core.poll`` for anything that polls.
    """


@hookspec
def on_connection(
    event: ConnectionEvent, context: DiscoveryContext[BaseModel]
) -> Awaitable[None] | None:
    """Called once when the node connects to a peer and once when it loses it; may be async.

    ``event.meta`` is the peer's metadata (``[node.meta]``, ``--meta``) as its own signed record
    says: what a host program reads to find the peer's own service (exo's API port, say).
    """


@hookspec
def doctor(  # type: ignore[empty-body]
    context: DiscoveryContext[BaseModel],
) -> Awaitable[list[CheckResult]] | list[CheckResult]:
    """Checks that this plugin can work here, each with a fix for when it cannot; may be async."""
