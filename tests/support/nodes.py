"""Real node processes for end-to-end tests: ``exo-discovery run --json`` in a subprocess.

Events are read from the process's stdout in a thread; ``wait_for`` blocks until a matching event
arrives (or raises with what was seen, and the process's log tail). Every process is ended on
``stop``/``kill`` and by the ``NodeFleet`` context manager, even when the test failed.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class NodeProcess:
    def __init__(
        self,
        state_dir: Path,
        args: Sequence[str] = (),
        *,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        name: str = "node",
        command: Sequence[str] | None = None,
        ready: str = "started",
        stdin: bool = False,
    ) -> None:
        """``command`` runs another program than ``exo-discovery run`` (a host program printing
        JSON events; ``ready`` is its first, with ``peer_id`` and ``port``); ``stdin`` gives it a
        pipe that :meth:`send` writes lines to."""
        self.name = name
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = state_dir / f"{name}.stderr.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env.pop("EXO_DISCOVERY_CONFIG", None)
        program = command or [sys.executable, "-m", "exo_discovery_core", "-vv", "run", "--json"]
        self.argv = [*prefix, *program, "--state-dir", str(state_dir), *args]
        self._stderr = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=full_env,
            cwd=str(state_dir),
        )
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        started = self.wait_for(ready, timeout=30)
        self.peer_id: str = started["peer_id"]
        self.port: int = started["port"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            event["_mono"] = time.monotonic()
            self._queue.put(event)
        self._queue.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None, "started without stdin=True"
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _matches(
        self, event: dict[str, Any], kind: str | tuple[str, ...], match: dict[str, Any]
    ) -> bool:
        kinds = (kind,) if isinstance(kind, str) else kind
        return event.get("event") in kinds and all(event.get(k) == v for k, v in match.items())

    def wait_for(
        self, kind: str | tuple[str, ...], timeout: float = 10.0, **match: Any
    ) -> dict[str, Any]:
        """The first event of ``kind`` (or of one of several kinds), with fields equal to
        ``match``, not yet consumed."""
        for event in self.events:
            if not event.get("_seen") and self._matches(event, kind, match):
                event["_seen"] = True
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self._queue.get(timeout=max(remaining, 0.001))
            except queue.Empty:
                event = None
                if remaining > 0:
                    continue
            if event is not None:
                self.events.append(event)
                if self._matches(event, kind, match):
                    event["_seen"] = True
                    return event
                continue
            seen = [e.get("event") for e in self.events]
            state = "exited" if self.proc.poll() is not None else "running"
            raise AssertionError(
                f"{self.name}: no {kind} {match} within {timeout} s ({state}); saw {seen}\n"
                f"--- log tail ---\n{self.log_tail()}"
            )

    def connected_peers(self) -> set[str]:
        """Peers connected now, from the events read so far (drains the queue first)."""
        self.drain()
        peers: set[str] = set()
        for event in self.events:
            if event.get("event") == "connected":
                peers.add(event["peer_id"])
            elif event.get("event") == "disconnected":
                peers.discard(event["peer_id"])
        return peers

    def drain(self) -> None:
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return
            if event is not None:
                self.events.append(event)

    def count(self, kind: str | tuple[str, ...], **match: Any) -> int:
        self.drain()
        return sum(1 for e in self.events if self._matches(e, kind, match))

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode

    def join_reader(self, timeout: float = 5.0) -> None:
        """Wait until all of the process's stdout has been read (after it exited)."""
        self._reader.join(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class NodeFleet:
    """Starts nodes under one temp dir and ends all of them on exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[NodeProcess] = []

    def start(
        self, name: str, *args: str, state_dir_override: Path | None = None, **kwargs: Any
    ) -> NodeProcess:
        node = NodeProcess(state_dir_override or self.root / name, args, name=name, **kwargs)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            try:
                node.stop(timeout=5)
            except Exception:  # noqa: BLE001 - keep ending the others
                node.kill()


@contextmanager
def fleet(root: Path) -> Iterator[NodeFleet]:
    nodes = NodeFleet(root)
    try:
        yield nodes
    finally:
        nodes.close()
