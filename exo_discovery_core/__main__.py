"""``python -m exo_discovery_core`` is ``exo-discovery``."""

from .cli import main

main()
