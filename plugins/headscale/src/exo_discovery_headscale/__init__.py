"""exo-discovery plugin for Headscale: online nodes carrying a tag (``tag:exo``) become peers."""

from .api import HeadscaleClient, HeadscaleError
from .config import HeadscaleConfig
from .plugin import HeadscalePlugin

__all__ = [
    "HeadscaleClient",
    "HeadscaleConfig",
    "HeadscaleError",
    "HeadscalePlugin",
]
