"""exo-discovery plugin: mDNS / DNS-SD discovery of the nodes of one namespace on the local network.

The entry point is :mod:`exo_discovery_mdns.plugin`; the record format is in :mod:`.records`.
The names below are imported on first use: loading the entry point imports this package first,
and that must cost none of the modules the plugin needs only once it runs.
"""

from __future__ import annotations

from exo_discovery_core.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .config import DEFAULT_SERVICE_TYPE, MdnsConfig
    from .records import PROTOCOL_VERSION, candidate_from_service, txt_properties

_EXPORTS = {
    "DEFAULT_SERVICE_TYPE": "config",
    "MdnsConfig": "config",
    "PROTOCOL_VERSION": "records",
    "candidate_from_service": "records",
    "txt_properties": "records",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DEFAULT_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "MdnsConfig",
    "candidate_from_service",
    "txt_properties",
]
