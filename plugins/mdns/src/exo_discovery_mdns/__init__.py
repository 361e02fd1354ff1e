"""exo-discovery plugin: mDNS / DNS-SD discovery of the nodes of one namespace on the local network.

The entry point is :mod:`exo_discovery_mdns.plugin`; the record format is in :mod:`.records`.
"""

from .config import DEFAULT_SERVICE_TYPE, MdnsConfig
from .records import PROTOCOL_VERSION, candidate_from_service, txt_properties

__all__ = [
    "DEFAULT_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "MdnsConfig",
    "candidate_from_service",
    "txt_properties",
]
