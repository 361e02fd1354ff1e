"""What ``run``, ``peers`` and ``doctor`` say of each plugin, as a user sees it: ``idle`` with how
to configure it, ``failing`` with the reason, ``ok`` with what it sees."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import exo_discovery, start


class RunningNode:
    """``exo-discovery run --json`` with its events read line by line; ended by the test."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.proc = start(
            home, "run", "--json", "--listen-host", "127.0.0.1", "--port", "0", *args, env=env
        )
        self.events: list[dict[str, Any]] = []

    def wait_for(self, kind: str, **match: Any) -> dict[str, Any]:
        """The next event of ``kind`` (the process's own pace is the deadline: it is read
        line by line, and a node that exits ends the read)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event
        raise AssertionError(f"no {kind} {match}; saw {self.events}; {self.stop()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def running(tmp_path: Path) -> Iterator[list[RunningNode]]:
    started: list[RunningNode] = []
    yield started
    for node in started:
        node.stop()


def test_headscale_with_a_url_and_no_key_is_failing_and_says_the_key_is_missing(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    node = RunningNode(
        tmp_path,
        env={"EXO_DISCOVERY_PLUGINS": "headscale", "HEADSCALE_API_URL": "http://127.0.0.1:9"},
    )
    running.append(node)
    failing = node.wait_for("plugin_error", plugin="headscale")
    assert failing["error"].startswith(
        "no API key for http://127.0.0.1:9: create one with `headscale apikeys create`, then set "
        "api_key ([plugins.headscale] api_key or api_key_file, --headscale-api-key, env "
        "HEADSCALE_API_KEY or HEADSCALE_API_KEY_FILE)"
    ), failing
    status = exo_discovery(tmp_path, "peers", "--json")
    [headscale] = [p for p in json.loads(status.stdout)["plugins"] if p["name"] == "headscale"]
    assert headscale["healthy"] is False and headscale["health"] == failing["error"]
