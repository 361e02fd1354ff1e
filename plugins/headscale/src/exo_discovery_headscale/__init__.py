"""exo-discovery plugin for Headscale: online nodes carrying a tag (``tag:exo``) become peers.

The names below are imported on first use: loading the entry point imports this package first,
and that must cost none of the modules (the API client, its models, httpx) the plugin needs only
once it runs.
"""

from __future__ import annotations

from exo_discovery_core.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import HeadscaleClient, HeadscaleError
    from .config import HeadscaleConfig
    from .plugin import HeadscalePlugin

_EXPORTS = {
    "HeadscaleClient": "api",
    "HeadscaleError": "api",
    "HeadscaleConfig": "config",
    "HeadscalePlugin": "plugin",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "HeadscaleClient",
    "HeadscaleConfig",
    "HeadscaleError",
    "HeadscalePlugin",
]
