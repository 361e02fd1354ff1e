"""The ``exo-discovery`` command run as a user runs it: the installed console script, in a
directory of the test's own, with a state dir of its own and no config from the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

EXO_DISCOVERY = str(Path(sys.executable).parent / "exo-discovery")
# a running node uses only the bootstrap plugin unless a test says otherwise: no mDNS multicast
# goes out on the host's own LAN
QUIET_PLUGINS = {"EXO_DISCOVERY_PLUGINS": "bootstrap"}


def user_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXO_", "HEADSCALE_"))}
    env.update({"EXO_DISCOVERY_STATE_DIR": str(home / "state"), "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def exo_discovery(
    home: Path, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end; stdout, stderr and the exit code are the test's to check."""
    return subprocess.run(
        [EXO_DISCOVERY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
        env=user_env(home, env),
    )


def start(home: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a long-running command (``run``); the caller ends it."""
    return subprocess.Popen(
        [EXO_DISCOVERY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=home,
        env=user_env(home, env),
    )
