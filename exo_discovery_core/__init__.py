"""exo-discovery core: the hook contract, the data models and the node that runs discovery plugins.

Plugin authors need only what is exported here (and :mod:`exo_discovery_core.testing`).
"""

from .config import ConfigError, NodeConfig, option
from .hookspecs import hookimpl
from .identity import PeerId
from .models import (
    TAILSCALE_NETWORKS,
    Address,
    CheckResult,
    ConnectionEvent,
    ConnectionState,
    DiscoveryContext,
    NodeInfo,
    PeerCandidate,
)
from .polling import SourceError, Trigger, poll
from .routes import is_tailscale, local_addresses

__all__ = [
    "TAILSCALE_NETWORKS",
    "Address",
    "CheckResult",
    "ConfigError",
    "ConnectionEvent",
    "ConnectionState",
    "DiscoveryContext",
    "NodeConfig",
    "NodeInfo",
    "PeerCandidate",
    "PeerId",
    "SourceError",
    "Trigger",
    "hookimpl",
    "is_tailscale",
    "local_addresses",
    "option",
    "poll",
]
