"""exo-discovery core: the hook contract, the data models and the node that runs discovery plugins.

Plugin authors need only what is exported here (and :mod:`exo_discovery_core.testing`).

The names are imported on first use (PEP 562), so importing the package costs nothing: the
``exo-discovery`` command can take over Ctrl-C before pydantic and the rest are loaded.
"""

from __future__ import annotations

from .lazy import lazy_exports

TYPE_CHECKING = False  # not typing's: importing typing costs milliseconds of start-up
if TYPE_CHECKING:
    from .config import ConfigError, NodeConfig
    from .hookspecs import hookimpl
    from .identity import PeerId
    from .ip import (
        IP,
        TAILSCALE_NETWORKS,
        Interface,
        interface_addresses,
        interfaces,
        is_tailscale,
        local_addresses,
        parse_ip,
        parse_ips,
    )
    from .logonce import LogOnce
    from .models import (
        Address,
        CheckResult,
        ConnectionEvent,
        ConnectionState,
        DiscoveryContext,
        NodeInfo,
        PeerCandidate,
        PeerSets,
    )
    from .optionhelp import option
    from .polling import SourceError, Trigger, poll

_EXPORTS = {
    "ConfigError": "config",
    "NodeConfig": "config",
    "option": "optionhelp",
    "hookimpl": "hookspecs",
    "PeerId": "identity",
    "IP": "ip",
    "TAILSCALE_NETWORKS": "ip",
    "Interface": "ip",
    "interface_addresses": "ip",
    "interfaces": "ip",
    "is_tailscale": "ip",
    "local_addresses": "ip",
    "parse_ip": "ip",
    "parse_ips": "ip",
    "LogOnce": "logonce",
    "Address": "models",
    "CheckResult": "models",
    "ConnectionEvent": "models",
    "ConnectionState": "models",
    "DiscoveryContext": "models",
    "NodeInfo": "models",
    "PeerCandidate": "models",
    "PeerSets": "models",
    "SourceError": "polling",
    "Trigger": "polling",
    "poll": "polling",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "IP",
    "TAILSCALE_NETWORKS",
    "Address",
    "CheckResult",
    "ConfigError",
    "ConnectionEvent",
    "ConnectionState",
    "DiscoveryContext",
    "Interface",
    "LogOnce",
    "NodeConfig",
    "NodeInfo",
    "PeerCandidate",
    "PeerId",
    "PeerSets",
    "SourceError",
    "Trigger",
    "hookimpl",
    "interface_addresses",
    "interfaces",
    "is_tailscale",
    "local_addresses",
    "option",
    "parse_ip",
    "parse_ips",
    "poll",
]
