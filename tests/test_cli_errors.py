"""Every failure a user can cause, as a user causes it: the real ``exo-discovery`` command, its
stdout, stderr and exit code. Each ends in one line (or a short block) naming the thing at fault
and a fix, with a non-zero exit code, and no traceback unless -vv."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.cli import EXO_DISCOVERY, QUIET_PLUGINS, exo_discovery, start, user_env

STATE_DIR_FIX = "--state-dir, EXO_DISCOVERY_STATE_DIR or [node] state_dir"


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert "Error:" not in result.stderr or "Usage:" in result.stderr  # click's own block only


def test_port_already_in_use_names_the_port_and_how_to_change_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = exo_discovery(
            tmp_path, "run", "--listen-host", "127.0.0.1", "--port", str(port), env=QUIET_PLUGINS
        )
    assert result.returncode == 1
    no_traceback(result)
    assert result.stderr.splitlines() == [
        f"error: port {port} is already in use on 127.0.0.1 (another exo-discovery running?); "
        "stop the other program, or choose another port with --port, EXO_DISCOVERY_PORT "
        "or [node] port (0: any free port)",
    ]


@pytest.mark.parametrize("command", ["run", "id"])
def test_a_state_dir_that_is_a_file_is_named_with_the_option_to_change_it(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    for state_dir, problem in [
        (tmp_path / "file", "it is a file, not a directory"),
        (tmp_path / "file" / "state", "a part of the path is a file, not a directory"),
    ]:
        result = exo_discovery(
            tmp_path, command, env={**QUIET_PLUGINS, "EXO_DISCOVERY_STATE_DIR": str(state_dir)}
        )
        assert result.returncode == 1, result.stderr
        no_traceback(result)
        assert result.stderr.splitlines() == [
            f"error: state dir {state_dir}: {problem}; "
            f"choose a directory this user can write with {STATE_DIR_FIX}",
        ]


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root, and no setpriv to drop it"
)
@pytest.mark.parametrize("command", ["run", "id"])
def test_an_unwritable_state_dir_is_named_with_the_option_to_change_it(
    tmp_path: Path, command: str
) -> None:
    """As an ordinary user (root writes anywhere: the test drops to nobody with setpriv)."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    for parent in [locked, *locked.parents]:  # pytest's own dirs are 0700: let nobody in
        if parent == Path(tempfile.gettempdir()) or parent.stat().st_uid != os.geteuid():
            break
        parent.chmod(parent.stat().st_mode | 0o111)
    as_user = (
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    )
    if os.geteuid() != 0:
        locked.chmod(0o555)
    state_dir = locked / "state"
    result = subprocess.run(
        [*as_user, EXO_DISCOVERY, command, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env=user_env(tmp_path, QUIET_PLUGINS),
    )
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    assert result.stderr.splitlines() == [
        f"error: state dir {state_dir}: cannot create or write it (Permission denied); "
        f"choose a directory this user can write with {STATE_DIR_FIX}",
    ]


@pytest.mark.parametrize("command", ["run", "id"])
def test_an_empty_key_file_is_one_line_with_a_fix(tmp_path: Path, command: str) -> None:
    key = tmp_path / "state" / "identity.key"
    key.parent.mkdir()
    key.write_bytes(b"")
    result = exo_discovery(tmp_path, command, env=QUIET_PLUGINS)
    assert result.returncode == 1
    no_traceback(result)
    assert result.stderr.splitlines() == [
        f"error: key file {key} is empty (0 bytes): not an Ed25519 key; restore it from a "
        "backup, or make a new key (a new peer id) with "
        f"`exo-discovery id --regenerate --state-dir {key.parent}`"
    ]


def test_minus_vv_shows_the_traceback_as_well(tmp_path: Path) -> None:
    key = tmp_path / "state" / "identity.key"
    key.parent.mkdir()
    key.write_bytes(b"")
    result = exo_discovery(tmp_path, "-vv", "id")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: key file {key} is empty")


def _wait_until_loading(proc: subprocess.Popen[str], library: str, timeout: float = 30) -> None:
    """Until ``library`` is mapped into the process: it is importing its dependencies."""
    deadline = time.monotonic() + timeout
    maps = Path(f"/proc/{proc.pid}/maps")
    while library not in maps.read_text(errors="replace"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{library} never loaded"
        time.sleep(0.001)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/PID/maps")
@pytest.mark.parametrize("after", [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5])
def test_ctrl_c_in_the_first_half_second_exits_130_without_a_traceback(
    tmp_path: Path, after: float
) -> None:
    """From the moment its dependencies load (the imports were the window of the traceback)."""
    proc = start(tmp_path, "run", "--listen-host", "127.0.0.1", "--port", "0", env=QUIET_PLUGINS)
    try:
        _wait_until_loading(proc, "pydantic_core")
        time.sleep(after)  # the moment of the Ctrl-C, not a wait for something to happen
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Aborted" not in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_running_node_stopped_by_ctrl_c_exits_130_and_by_sigterm_0(
    tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    proc = start(
        tmp_path, "run", "--json", "--listen-host", "127.0.0.1", "--port", "0", env=QUIET_PLUGINS
    )
    try:
        assert proc.stdout is not None
        assert '"event":"started"' in proc.stdout.readline()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--port", "abc"], {}, "error: flag --port: expected a whole number (node)"),
        (
            [],
            {"EXO_DISCOVERY_PORT": "abc"},
            "error: env EXO_DISCOVERY_PORT: expected a whole number (node)",
        ),
        (
            ["--bootstrap-peers", "http://127.0.0.1:52417"],
            {},
            "error: flag --bootstrap-peers item 1: bad bootstrap peer 'http://127.0.0.1:52417': "
            "a URL, not a peer address: drop the http://, write 127.0.0.1:52417 (plugin 'bootstrap')",
        ),
    ],
)
def test_bad_flag_and_env_values_are_one_line_naming_them(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = exo_discovery(tmp_path, "run", *args, env={**QUIET_PLUGINS, **env})
    assert result.returncode == 2
    no_traceback(result)
    assert result.stderr.splitlines() == [expected]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            '[plugins.bootstrap]\npeers = "10.0.0.2:52417"\n',
            '[plugins.bootstrap] peers: a list is needed, not one string: write peers = ["..."] '
            "(plugin 'bootstrap')",
        ),
        (
            '[plugins]\ndisable = ["headscale"]\n',
            ": [plugins] unknown key 'disable' (did you mean 'disabled'?)",
        ),
        (
            "[node]\nprot = 1\n",
            "[node] prot: unknown key (did you mean 'port'?) (known keys in [node]: ",
        ),
        ("[nodes]\nport = 1\n", ": unknown top-level key 'nodes' (did you mean 'node'?)"),
        (
            '[plugins.bootstrp]\npeers = ["10.0.0.2:52417"]\n',
            ": [plugins.bootstrp] is not an installed plugin; did you mean [plugins.bootstrap]? "
            "(installed: ",
        ),
        (
            '[plugins]\nenabled = ["mdsn"]\n',
            " [plugins] enabled: plugin 'mdsn' is not installed (did you mean 'mdns'?) (installed: ",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "doctor"])
def test_config_file_mistakes_are_one_line_with_a_hint(
    tmp_path: Path, toml: str, expected: str, command: str
) -> None:
    """``doctor`` fails on them too (it printed ✓ configuration for a misspelt plugin table)."""
    (tmp_path / "exo-discovery.toml").write_text(toml)
    result = exo_discovery(tmp_path, command)
    no_traceback(result)
    if command == "run":
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith("error: exo-discovery.toml") and expected in line
    else:
        assert result.returncode == 1
        [line] = result.stdout.splitlines()
        assert line.startswith("✗ configuration: exo-discovery.toml") and expected in line


def test_plugin_names_and_flags_get_a_did_you_mean(tmp_path: Path) -> None:
    plugin = exo_discovery(tmp_path, "plugins", "--plugins", "bootstrp")
    assert plugin.returncode == 2
    no_traceback(plugin)
    assert plugin.stderr.startswith(
        "error: flag --plugins: plugin 'bootstrp' is not installed (did you mean 'bootstrap'?)"
    )
    flag = exo_discovery(tmp_path, "run", "--namespac", "lab", env=QUIET_PLUGINS)
    assert flag.returncode == 2
    no_traceback(flag)
    last = flag.stderr.splitlines()[-1]  # click may name other close options too (--meta)
    assert last.startswith("Error: No such option '--namespac'.") and "'--namespace'" in last
    other = exo_discovery(
        tmp_path, "run", "--headscale-api-url", "http://127.0.0.1:1", env=QUIET_PLUGINS
    )
    assert other.returncode == 2
    assert "(flags of plugins not loaded here: " in other.stderr and "headscale" in other.stderr


def test_disabling_a_plugin_that_is_not_installed_is_a_warning(tmp_path: Path) -> None:
    result = exo_discovery(tmp_path, "plugins", "--disable-plugin", "no-such-plugin")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: flag --disable-plugin: plugin 'no-such-plugin' is not installed, nothing to "
        f"disable (installed: {', '.join(_installed())})"
    ]
    assert "bootstrap" in result.stdout
    doctor = exo_discovery(tmp_path, "doctor", "--plugins", "bootstrap", "--disable-plugin", "nope")
    assert doctor.returncode == 0, doctor.stdout
    assert "! flag --disable-plugin: plugin 'nope' is not installed" in doctor.stdout


def _installed() -> list[str]:
    from exo_discovery_core.plugins import installed_entry_points

    return sorted(installed_entry_points())
