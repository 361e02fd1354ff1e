"""exo-discovery-bootstrap: a fixed list of peers (config, flag, env or a watched file).

The plugin for networks where nothing can be discovered: the user names a few peers and every
node that reaches one of them joins the cluster.
"""

from .entries import BadEntry, BootstrapEntry, parse_entry
from .peersfile import BadPeersFile, parse_peers_file
from .plugin import BootstrapConfig, BootstrapPlugin

__all__ = [
    "BadEntry",
    "BadPeersFile",
    "BootstrapConfig",
    "BootstrapEntry",
    "BootstrapPlugin",
    "parse_entry",
    "parse_peers_file",
]
