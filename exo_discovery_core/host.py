"""What a host program (exo) needs to embed a node, in one import.

    from exo_discovery_core.host import Node

    node = Node.from_settings(namespace="lab", port=0, plugins={"bootstrap": {"peers": [...]}})
    async with node, node.events() as events:
        async for event in events:
            ...

``docs/embedding.md`` describes each piece. Plugin authors import from the package root instead.
"""

from __future__ import annotations

from .config import ConfigError, NodeConfig
from .events import EventKind, NodeEvent
from .identity import PeerId
from .models import Address
from .node import Node
from .routes import RouteClass
from .status import PeerAddress, PeerView, Status
from .threaded import NodeThread

__all__ = [
    "Address",
    "ConfigError",
    "EventKind",
    "Node",
    "NodeConfig",
    "NodeEvent",
    "NodeThread",
    "PeerAddress",
    "PeerId",
    "PeerView",
    "RouteClass",
    "Status",
]
