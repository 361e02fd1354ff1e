"""exo-discovery plugin: the online peers of your tailnet, read from the local tailscaled.

The entry point is :mod:`exo_discovery_tailscale.plugin`; nothing here imports it, so listing
plugins stays cheap.
"""

__version__ = "0.1.0"
