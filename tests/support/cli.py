"""The ``exo-discovery`` command run as a user runs it: the installed console script, in a
directory of the test's own, with a state dir of its own and no config from the environment."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXO_DISCOVERY = str(Path(sys.executable).parent / "exo-discovery")
# a running node uses only the bootstrap plugin unless a test says otherwise: no mDNS multicast
# goes out on the host's own LAN
QUIET_PLUGINS = {"EXO_DISCOVERY_PLUGINS": "bootstrap"}


_PROBE = """
import contextlib, io, json, sys
from exo_discovery_core.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit as exc:
        assert not exc.code, exc.code
print(json.dumps({"out": out.getvalue(), "imported": [m for m in MODULES if m in sys.modules]}))
"""


def import_probe(modules: Sequence[str]) -> str:
    """Source for ``python -c``: the CLI's own entry function run in-process on the arguments
    after ``-c``, then one JSON line: ``out`` (what it printed) and ``imported`` (which of
    ``modules`` it imported on the way)."""
    return f"MODULES = {tuple(modules)!r}\n{_PROBE}"


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


class RunningNode:
    """``exo-discovery run --json`` on loopback, its events read as they come; ended by the test
    (the ``running`` fixture stops every one)."""

    def __init__(self, home: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.proc = start(
            home, "run", "--json", "--listen-host", "127.0.0.1", "--port", "0", *args, env=env
        )
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(json.loads(line))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)  # read as it comes: a full pipe would block the node

    def wait_for(self, kind: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """The next event of ``kind`` with the fields in ``match``, within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if event is None:
                break  # the node exited
            self.events.append(event)
            if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        raise AssertionError(f"no {kind} {match} in {timeout} s; saw {self.events}; {self.stop()}")

    def stop(self) -> str:
        """SIGTERM, then its stderr (killed if it does not stop within 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr_reader.join(timeout=10)
        return "".join(self.stderr)
