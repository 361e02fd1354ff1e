"""What ``run``, ``peers`` and ``doctor`` say of each plugin, as a user sees it: ``idle`` with how
to configure it, ``failing`` with the reason, ``ok`` with what it sees."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import RunningNode, exo_discovery


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


def _plugin_states(home: Path, deadline: float) -> dict[str, dict[str, Any]]:
    """The running node's plugins, once none is still starting (until ``deadline``)."""
    while True:
        result = exo_discovery(home, "peers", "--json")
        if result.returncode == 0:
            plugins = {p["name"]: p for p in json.loads(result.stdout)["plugins"]}
            running = [p for p in plugins.values() if p["enabled"]]
            if running and all(p["state"] != "starting" for p in running):
                return plugins
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("plugin", "env", "state", "health"),
    [
        (
            "bootstrap",
            {},
            "idle",
            "to use it, set peers ([plugins.bootstrap] peers, --bootstrap-peers, env "
            "EXO_BOOTSTRAP_PEERS): Peers to join",
        ),
        (
            "headscale",
            {},
            "idle",
            "to use it, set api_url ([plugins.headscale] api_url, --headscale-api-url, env "
            "HEADSCALE_API_URL)",
        ),
        ("tailscale", {"TAILSCALE_SOCKET": "{home}/no-tailscaled.sock"}, "idle",
         "no tailscaled on this machine (no socket at {home}/no-tailscaled.sock); to use it, "
         "start tailscaled"),
        ("bootstrap", {"EXO_BOOTSTRAP_PEERS": "127.0.0.1:9"}, "ok", "1 peer configured"),
        ("headscale", {"HEADSCALE_API_URL": "http://127.0.0.1:9"}, "failing", "no API key for"),
    ],
)  # fmt: skip
def test_each_plugin_says_whether_it_is_idle_ok_or_failing_and_why(
    tmp_path: Path,
    running: list[RunningNode],
    plugin: str,
    env: dict[str, str],
    state: str,
    health: str,
) -> None:
    env = {k: v.format(home=tmp_path) for k, v in env.items()}
    node = RunningNode(tmp_path, env={"EXO_DISCOVERY_PLUGINS": plugin, **env})
    running.append(node)
    node.wait_for("started")
    shown = _plugin_states(tmp_path, time.monotonic() + 20)[plugin]
    health = health.format(home=tmp_path)
    assert (shown["state"], shown["health"][: len(health)]) == (state, health)
    assert shown["healthy"] is (state != "failing")
    # and the others are shown as not running, with why
    others = [
        p for name, p in _plugin_states(tmp_path, time.monotonic() + 5).items() if name != plugin
    ]
    assert all(p["state"] is None and p["status"].startswith("not in env") for p in others)


def test_plugins_shows_the_running_nodes_state_and_doctor_says_idle(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    env = {"EXO_DISCOVERY_PLUGINS": "bootstrap,headscale"}
    before = exo_discovery(tmp_path, "plugins", env=env)
    assert before.returncode == 0 and "(STATE from the node running" not in before.stdout
    node = RunningNode(tmp_path, env=env)
    running.append(node)
    node.wait_for("started")
    _plugin_states(tmp_path, time.monotonic() + 20)
    listed = exo_discovery(tmp_path, "plugins", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "  idle: to use it, set peers ([plugins.bootstrap] peers" in rows["bootstrap"]
    assert "  idle: to use it, set api_url ([plugins.headscale] api_url" in rows["headscale"]
    assert "  disabled (not in env EXO_DISCOVERY_PLUGINS)" in rows["mdns"]
    assert listed.stdout.splitlines()[-1] == "(STATE from the node running with this state dir)"
    as_json = {
        p["name"]: p
        for p in json.loads(exo_discovery(tmp_path, "plugins", "--json", env=env).stdout)
    }
    assert as_json["bootstrap"]["state"] == "idle" and as_json["mdns"]["state"] is None

    doctor = exo_discovery(tmp_path, "doctor", env=env)
    assert doctor.returncode == 0, doctor.stdout
    assert "✓ bootstrap: peers configured: none, so the plugin stays idle" in doctor.stdout
    assert "✓ headscale: configured: no api_url, so the plugin stays idle" in doctor.stdout
    assert (
        "the node running with this state dir says:\n  bootstrap: idle: to use it" in doctor.stdout
    )
