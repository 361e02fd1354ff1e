"""``python -m exo_discovery_core`` is ``exo-discovery``."""

from .console import main

main()
