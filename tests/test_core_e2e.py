"""Real node processes on loopback, with a plugin installed through a real entry point."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.nodes import NodeFleet


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def on_connection_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "on_connection" in line]


def on_connection_states(log: Path, count: int, timeout: float = 15.0) -> list[str]:
    """The states the plugin's on_connection logged, once there are ``count`` of them: it runs
    in its own task, so its line may come a moment after the node's ``connected`` event."""
    deadline = time.monotonic() + timeout
    while True:
        states = [line.rsplit(" ", 1)[-1] for line in on_connection_lines(log)]
        if len(states) >= count or time.monotonic() > deadline:
            return states
        time.sleep(0.05)


def test_two_nodes_connect_notice_a_kill_and_reconnect_with_the_same_id(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    port_a, port_b = free_port(), free_port()
    args = ["--plugins", "static", "--listen-host", "127.0.0.1"]
    a = nodes.start(
        "a",
        *args,
        "--port",
        str(port_a),
        "--static-peers",
        f"127.0.0.1:{port_b}",
        env=static_plugin_env,
    )
    b = nodes.start(
        "b",
        *args,
        "--port",
        str(port_b),
        "--static-peers",
        f"127.0.0.1:{port_a}",
        env=static_plugin_env,
    )
    assert a.wait_for("connected", timeout=10)["peer_id"] == b.peer_id
    assert b.wait_for("connected", timeout=10)["peer_id"] == a.peer_id
    time.sleep(1.5)  # both dialed: any duplicate has been settled by now
    assert a.count("connected") == 1 and b.count("connected") == 1
    assert a.count("disconnected") == 0 and b.count("disconnected") == 0
    for node in (a, b):
        states = on_connection_states(node.log_path, 1)
        assert states == ["CONNECTED"], (states, node.log_path.read_text()[-3000:])
    table = run_cli("peers", "--json", "--state-dir", str(a.state_dir), env={}, cwd=a.state_dir)
    assert table.returncode == 0, table.stderr
    status = json.loads(table.stdout)
    assert status["peer_id"] == a.peer_id
    [row] = status["peers"]
    assert row["peer_id"] == b.peer_id and row["state"] == "connected"
    assert row["sources"] == ["static"]
    human = run_cli("peers", "--state-dir", str(a.state_dir), env={}, cwd=a.state_dir)
    assert b.peer_id[:12] in human.stdout and "connected" in human.stdout  # a short id

    killed_at = time.monotonic()
    b.kill()
    gone = a.wait_for("disconnected", timeout=5, peer_id=b.peer_id)
    assert gone["_mono"] - killed_at <= 3.0, "a dead peer must be noticed within the default bound"

    again = nodes.start(
        "b2",
        *args,
        "--port",
        str(port_b),
        "--static-peers",
        f"127.0.0.1:{port_a}",
        env=static_plugin_env,
        state_dir_override=b.state_dir,
    )
    assert again.peer_id == b.peer_id, "the peer id changed across a restart"
    assert a.wait_for("connected", timeout=10, peer_id=b.peer_id)
    # up, down, up: one per real transition
    assert on_connection_states(a.log_path, 3) == ["CONNECTED", "DISCONNECTED", "CONNECTED"]


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "exo_discovery_core", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **env, "EXO_DISCOVERY_STATE_DIR": str(cwd / "state")},
    )


def test_entry_point_plugin_is_listed_and_a_disabled_one_is_never_imported(
    tmp_path: Path, static_plugin_env: dict[str, str]
) -> None:
    marker = tmp_path / "imported"
    env = {**static_plugin_env, "STATIC_MARKER": str(marker)}
    listed = run_cli("plugins", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    static = next(p for p in json.loads(listed.stdout) if p["name"] == "static")
    assert static["distribution"] == "exo-discovery-static" and static["version"] == "0.1.0"
    assert static["enabled"] and static["error"] is None
    assert marker.read_text() == "imported\n"
    marker.unlink()

    (tmp_path / "exo-discovery.toml").write_text("[plugins.static]\nenabled = false\n")
    listed = run_cli("plugins", "--json", env=env, cwd=tmp_path)
    static = next(p for p in json.loads(listed.stdout) if p["name"] == "static")
    assert not static["enabled"] and "enabled = false" in static["status"]
    assert not marker.exists(), "a disabled plugin was imported"
    by_env = run_cli(
        "plugins", env={**env, "EXO_DISCOVERY_DISABLE_PLUGINS": "static"}, cwd=tmp_path
    )
    assert "disabled" in by_env.stdout and not marker.exists()


def test_broken_plugins_are_reported_by_name_and_the_node_still_runs(
    tmp_path: Path, static_plugin_env: dict[str, str], nodes: NodeFleet
) -> None:
    from tests.support.fake_install import install_plugin

    site = Path(static_plugin_env["PYTHONPATH"].split(":")[0])
    install_plugin(
        site,
        dist="exo-discovery-broken",
        module="exo_broken_plugin",
        source="raise ImportError('missing dependency frobnicate')\n",
        entry="broken",
    )
    install_plugin(
        site,
        dist="exo-discovery-typo",
        module="exo_typo_plugin",
        entry="typo",
        source="from exo_discovery_core import hookimpl\n"
        "@hookimpl\ndef discover_peer(context):\n    return None\n",
    )
    listed = run_cli("plugins", env=static_plugin_env, cwd=tmp_path)
    assert "broken" in listed.stdout and "missing dependency frobnicate" in listed.stdout
    assert "unknown hook(s) discover_peer" in listed.stdout
    # the broken plugins fail at load whatever else runs; mDNS stays off (no multicast on the host LAN)
    node = nodes.start("n", "--port", "0", "--plugins", "static,broken,typo", env=static_plugin_env)
    assert node.proc.poll() is None
    assert "plugin 'broken'" in node.log_tail(50)


def test_cli_as_a_new_user_would_try_it(tmp_path: Path, static_plugin_env: dict[str, str]) -> None:
    first = run_cli("id", env=static_plugin_env, cwd=tmp_path)
    second = run_cli("id", env=static_plugin_env, cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.startswith("12D3KooW")
    assert first.stdout == second.stdout

    # only our test plugin: what else is installed on this machine is not this test's business
    doctor = run_cli("doctor", "--plugins", "static", env=static_plugin_env, cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "configuration" in doctor.stdout and "plugin static" in doctor.stdout

    (tmp_path / "exo-discovery.toml").write_text("[plugins.static]\npeers = 5\n")
    bad = run_cli("doctor", "--plugins", "static", env=static_plugin_env, cwd=tmp_path)
    assert bad.returncode == 1
    assert "exo-discovery.toml [plugins.static] peers: Input should be a valid list" in bad.stdout
    bad_run = run_cli("run", "--json", env=static_plugin_env, cwd=tmp_path)
    assert bad_run.returncode == 2 and "[plugins.static] peers" in bad_run.stderr

    helped = run_cli("run", "--help", env=static_plugin_env, cwd=tmp_path)
    assert "--static-peers" in helped.stdout and "--port" in helped.stdout


def test_a_frozen_peer_is_declared_gone_by_heartbeat_within_the_bound(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    """kill -9 closes the socket (noticed at once); a frozen peer is silent: heartbeats catch it."""
    import signal

    port_a, port_b = free_port(), free_port()
    args = ["--plugins", "static", "--listen-host", "127.0.0.1"]
    a = nodes.start("a", *args, "--port", str(port_a), env=static_plugin_env)
    b = nodes.start(
        "b",
        *args,
        "--port",
        str(port_b),
        "--static-peers",
        f"127.0.0.1:{port_a}",
        env=static_plugin_env,
    )
    a.wait_for("connected", timeout=10, peer_id=b.peer_id)
    frozen_at = time.monotonic()
    b.proc.send_signal(signal.SIGSTOP)
    try:
        gone = a.wait_for("disconnected", timeout=6, peer_id=b.peer_id)
        noticed = gone["_mono"] - frozen_at
        # silence is noticed dead_after (2.5 s: suspicion, then an unanswered probe) after the
        # last frame, which came at most one heartbeat interval and a tick (0.75 s) before
        assert 1.4 <= noticed <= 3.0, f"noticed after {noticed:.2f} s (dead_after is 2.5 s)"
        assert "no heartbeat" in gone["reason"]
    finally:
        b.proc.send_signal(signal.SIGCONT)
    a.wait_for("connected", timeout=10, peer_id=b.peer_id)  # thawed, it redials


def test_peer_exchange_meshes_nodes_that_know_only_one_address(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    args = ["--plugins", "static", "--listen-host", "127.0.0.1", "--port", "0"]
    a = nodes.start("a", *args, env=static_plugin_env)
    others = [
        nodes.start(name, *args, "--static-peers", a.address, env=static_plugin_env)
        for name in ("b", "c", "d")
    ]
    for node in others:
        expected = {a.peer_id} | {o.peer_id for o in others if o is not node}
        for peer in expected:
            node.wait_for("connected", timeout=10, peer_id=peer)
        assert node.connected_peers() == expected
    learned = others[0].wait_for("peer_discovered", timeout=10, peer_id=others[1].peer_id)
    assert "exchange" in learned["sources"]
    # exchange off: b and c stay connected to a only
    off = [*args, "--no-exchange"]
    a2 = nodes.start("a2", *off, env=static_plugin_env)
    b2 = nodes.start("b2", *off, "--static-peers", a2.address, env=static_plugin_env)
    c2 = nodes.start("c2", *off, "--static-peers", a2.address, env=static_plugin_env)
    b2.wait_for("connected", timeout=10, peer_id=a2.peer_id)
    c2.wait_for("connected", timeout=10, peer_id=a2.peer_id)
    time.sleep(1.0)
    assert b2.connected_peers() == {a2.peer_id} and c2.connected_peers() == {a2.peer_id}


def test_events_of_a_run_from_started_to_stopped_carry_no_empty_lists(
    nodes: NodeFleet, static_plugin_env: dict[str, str]
) -> None:
    """One peer_discovered per peer (then peer_identified), addresses in started/connected, and
    'stopped' as the last line of ``run --json`` after SIGTERM."""
    args = ["--plugins", "static", "--listen-host", "127.0.0.1", "--port", "0"]
    a = nodes.start("a", *args, env=static_plugin_env)
    b = nodes.start("b", *args, "--static-peers", a.address, env=static_plugin_env)
    assert a.events[0]["addresses"] == [a.address]  # started: where it listens
    connected = b.wait_for("connected", timeout=10, peer_id=a.peer_id)
    assert connected["address"] == a.address and connected["addresses"] == [a.address]
    b.wait_for("peer_identified", timeout=5, peer_id=a.peer_id)
    assert b.stop() == 0
    b.join_reader()
    b.drain()
    kinds = [e["event"] for e in b.events]
    assert kinds[0] == "started" and kinds[-1] == "stopped", kinds
    assert kinds.count("peer_discovered") == 1, kinds  # the address, then its id: one peer
    assert all(e.get("addresses", ["-"]) and e.get("sources", ["-"]) for e in b.events), b.events
