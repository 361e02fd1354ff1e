"""What start-up imports: loading a plugin costs none of the heavy libraries it needs only once it
runs (zeroconf for mdns, httpx for headscale/http/tailscale, multiaddr for bootstrap entries).

Each check runs in a fresh interpreter (``sys.modules`` of the test process has everything), with
the installed plugins loaded through their entry points as the CLI loads them; the last one runs
real nodes and reads what they imported over their whole life.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import RunningNode, import_probe
from tests.support.fake_install import env_with

HEAVY = ("httpx", "zeroconf", "multiaddr", "netaddr", "yaml", "dns")
INSTALLED = ("bootstrap", "headscale", "http", "mdns", "tailscale")

CLI_PROBE = import_probe(HEAVY)

# Every plugin loaded, its config model read, and discover_peers called with its empty table:
# the unconfigured ones (headscale, http, bootstrap) answer None (idle) without importing anything.
IDLE_PROBE = """
import json, sys
from exo_discovery_core.plugins import PluginHost, installed_entry_points
from exo_discovery_core.testing import make_context
host = PluginHost()
host.load_installed({name: "enabled" for name in installed_entry_points()})
idle = {}
for name in ("bootstrap", "headscale", "http"):
    context = make_context(host.pm.get_plugin(name), {})
    idle[name] = host.call(name, "discover_peers", context=context) is None
print(json.dumps({"idle": idle, "errors": {n: i.error for n, i in host.infos.items() if i.error},
                  "imported": [m for m in HEAVY if m in sys.modules]}))
"""


def _probe(code: str, *argv: str, tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXO_", "HEADSCALE_"))}
    env["EXO_DISCOVERY_STATE_DIR"] = str(tmp_path / "state")
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.fixture(autouse=True)
def _all_installed() -> None:
    from exo_discovery_core.plugins import installed_entry_points

    missing = set(INSTALLED) - set(installed_entry_points())
    if missing:
        pytest.skip(f"plugins not installed here: {sorted(missing)}")


def test_plugins_command_lists_every_plugin_without_importing_their_libraries(
    tmp_path: Path,
) -> None:
    result = _probe(CLI_PROBE, "plugins", "--json", tmp_path=tmp_path)
    listed = {p["name"]: p for p in json.loads(result["out"])}
    assert sorted(listed) == sorted(INSTALLED)
    assert all(p["enabled"] and p["error"] is None and p["hooks"] for p in listed.values())
    assert result["imported"] == []


def test_unconfigured_plugins_stay_idle_without_importing_their_libraries(tmp_path: Path) -> None:
    result = _probe(IDLE_PROBE, tmp_path=tmp_path)
    assert result["errors"] == {}
    assert result["idle"] == {"bootstrap": True, "headscale": True, "http": True}
    assert result["imported"] == []


def test_host_port_bootstrap_entries_need_no_multiaddr(tmp_path: Path) -> None:
    code = """
import json, sys
from exo_discovery_bootstrap.plugin import BootstrapConfig
BootstrapConfig(peers=["127.0.0.1:52417", "[::1]:52417", "peer.example.org:52417"])
before = [m for m in HEAVY if m in sys.modules]
BootstrapConfig(peers=["/ip4/127.0.0.1/tcp/52417"])  # written as a multiaddr: cross-checked
print(json.dumps({"imported": before, "after": [m for m in HEAVY if m in sys.modules]}))
"""
    result = _probe(code, tmp_path=tmp_path)
    assert result["imported"] == []
    assert "multiaddr" in result["after"]


def test_run_help_builds_every_plugins_flags_without_importing_their_libraries(
    tmp_path: Path,
) -> None:
    result = _probe(CLI_PROBE, "run", "--help", tmp_path=tmp_path)
    for flag in ("--bootstrap-peers", "--headscale-api-url", "--mdns-interfaces", "--port"):
        assert flag in result["out"]
    assert result["imported"] == []


def test_loading_plugins_reads_their_metadata_only_when_shown(tmp_path: Path) -> None:
    """A running node never shows its plugins' versions unless asked (``plugins``, the status
    socket): loading them imports neither the email parser (METADATA) nor anyio's thread bridge
    (a Trigger set from another thread); the versions, once read, are the installed ones."""
    code = """
import json, sys
from importlib import metadata
from exo_discovery_core.plugins import PluginHost, installed_entry_points
host = PluginHost()
host.load_installed({name: "enabled" for name in installed_entry_points()})
lazy = ("email.parser", "anyio.from_thread")
before = [m for m in lazy if m in sys.modules]
info = host.infos["bootstrap"]
shown = [info.distribution, info.version]
print(json.dumps({"imported": before, "shown": shown,
                  "installed": metadata.version("exo-discovery-bootstrap")}))
"""
    result = _probe(code, tmp_path=tmp_path)
    assert result["imported"] == []
    assert result["shown"] == ["exo-discovery-bootstrap", result["installed"]]


# Written into a directory on the node's PYTHONPATH: Python imports ``sitecustomize`` at start-up,
# so the console script runs as a user runs it, and its modules are written down as it exits.
MODULES_AT_EXIT = """
import atexit, json, os, sys

def _write_modules():
    with open(os.environ["EXO_TEST_MODULES_FILE"], "w") as out:
        json.dump(sorted(sys.modules), out)

atexit.register(_write_modules)
"""
NOT_IN_A_RUNNING_NODE = (
    *HEAVY,
    "email.parser",  # a plugin's METADATA (its version): only `plugins` and the status socket show it
    "anyio.from_thread",  # the embedding host's thread bridge
    "pydantic.type_adapter",  # target groups (file_sd): a peers file or the http plugin
    "exo_discovery_core.doctor",
    "exo_discovery_core.members",  # the `peers` table
    "exo_discovery_core.threaded",  # a node on a thread of its own (embedding)
    "exo_discovery_core.testing",
    # this host's interfaces (ifaddr loads ctypes): a peer on loopback (or Tailscale) is classed
    # by its range, and these nodes listen and advertise on 127.0.0.1
    "ifaddr",
    "ctypes",
    "difflib",  # click's "did you mean" for an unknown option (it tried -v as a long one)
)


def test_a_running_node_imports_only_what_it_uses(
    tmp_path: Path, running: list[RunningNode]
) -> None:
    """Three nodes (the console script, the bootstrap plugin) mesh, the second and the third
    finding each other through the first's exchange, then stop: nothing they imported in their whole life is kept for
    other commands, other plugins or an embedding host (each such module costs a node memory)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(MODULES_AT_EXIT)
    nodes: list[RunningNode] = []
    for name in ("a", "b", "c"):
        home = tmp_path / name
        home.mkdir()
        env = {
            **env_with(site),
            "EXO_DISCOVERY_PLUGINS": "bootstrap",
            "EXO_TEST_MODULES_FILE": str(home / "modules.json"),
        }
        peers = ("--bootstrap-peers", f"127.0.0.1:{nodes[0].events[0]['port']}") if nodes else ()
        node = RunningNode(home, "-v", *peers, env=env)  # -v: as bench_scale and users start it
        running.append(node)
        node.wait_for("started")
        nodes.append(node)
    ids = {node.events[0]["peer_id"] for node in nodes}
    for node in nodes:
        others = ids - {node.events[0]["peer_id"]}
        connected = {e["peer_id"] for e in node.events if e["event"] == "connected"}
        while not others <= connected:
            connected.add(node.wait_for("connected")["peer_id"])
    for node in nodes:
        node.stop()
        assert node.proc.returncode == 0, "".join(node.stderr)
        imported = set(json.loads((node.home / "modules.json").read_text()))
        assert "exo_discovery_core.exchange" in imported  # it did run (and wrote at exit)
        assert sorted(imported.intersection(NOT_IN_A_RUNNING_NODE)) == []
