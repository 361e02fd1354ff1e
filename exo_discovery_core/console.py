"""The ``exo-discovery`` console script.

A Ctrl-C while the command is still loading exits 130 quietly, as one after it started does.
Until the command takes over the signal (``run`` does, to stop the node cleanly), SIGINT ends
the process at once: a KeyboardInterrupt raised inside an import, a destructor or a weakref
callback is printed by Python as a traceback ("Exception ignored in ...") even when caught, and
nothing is running yet that would need to be stopped.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

from .exitcodes import EXIT_INTERRUPTED


def _interrupted(signum: int, frame: FrameType | None) -> None:
    os._exit(EXIT_INTERRUPTED)  # nothing to clean up yet; no traceback can be printed


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted)
    try:
        from .cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:  # once a command restored Python's own handler
        sys.exit(EXIT_INTERRUPTED)
