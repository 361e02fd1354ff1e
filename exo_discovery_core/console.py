"""The ``exo-discovery`` console script.

A Ctrl-C while the command is still loading exits 130 quietly, as one after it started does:
the package's ``__init__`` imports nothing, so this runs before any dependency is loaded.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def main() -> None:
    try:
        from .cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
