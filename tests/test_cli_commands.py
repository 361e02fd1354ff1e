"""The commands a user reaches for first: --version, -v/-q/--log-level anywhere, ``plugins`` in
aligned columns, plugin selection in the documented precedence (file < env < flags)."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import signal
from pathlib import Path

import pytest

from exo_discovery_core.plugins import installed_entry_points
from tests.support.cli import QUIET_PLUGINS, exo_discovery, start


def test_version_names_the_core_and_each_installed_plugin(tmp_path: Path) -> None:
    result = exo_discovery(tmp_path, "--version")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    core = metadata.version("exo-discovery-core")
    assert lines[0] == f"exo-discovery {core} (exo-discovery-core)"
    assert lines[1] == "plugins:"
    rows = [line.split() for line in lines[2:]]
    expected = [
        [name, ep.dist.name, ep.dist.version]
        for name, ep in sorted(installed_entry_points().items())
        if ep.dist is not None
    ]
    assert rows == expected and len(rows) >= 3  # bootstrap, headscale, mdns at least
    assert len({line.index(row[1]) for line, row in zip(lines[2:], rows, strict=True)}) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "plugins"],
        ["plugins", "-v"],
        ["plugins", "-vv"],
        ["-q", "plugins"],
        ["plugins", "-q"],
        ["--log-level", "debug", "plugins"],
        ["plugins", "--log-level", "info"],
        ["plugins", "--log-level=ERROR"],
        ["-v", "plugins", "-v", "--log-level", "warning"],
    ],
)
def test_log_options_are_accepted_before_and_after_the_command(
    tmp_path: Path, args: list[str]
) -> None:
    result = exo_discovery(tmp_path, *args, "--json")
    assert result.returncode == 0, result.stderr
    assert {p["name"] for p in json.loads(result.stdout)} >= {"bootstrap", "mdns"}


@pytest.mark.parametrize(("option", "shown"), [("-v", True), ("-q", False)])
def test_log_options_after_run_reach_the_log_on_stderr(
    tmp_path: Path, option: str, shown: bool
) -> None:
    """``run -v`` was "No such option"; now it logs at info, on stderr, never on stdout."""
    proc = start(
        tmp_path,
        "run",
        "--json",
        option,
        "--listen-host",
        "127.0.0.1",
        "--port",
        "0",
        env=QUIET_PLUGINS,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    line = f"INFO exo_discovery.node: node {started['peer_id']} listening on port {started['port']}"
    assert (line in err) is shown, err
    assert all(json.loads(text) for text in out.splitlines())


def test_plugins_columns_are_aligned(tmp_path: Path) -> None:
    result = exo_discovery(tmp_path, "plugins", "--disable-plugin", "headscale")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "STATE"]
    for column in ("DISTRIBUTION", "VERSION", "STATE"):
        start = lines[0].index(column)
        for line in lines[1:]:
            assert line[start - 2 : start] == "  " and line[start] != " ", (column, line)
    headscale = next(line for line in lines if line.startswith("headscale "))
    assert headscale.endswith("disabled (disabled by flag --disable-plugin)")


def _enabled(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    result = exo_discovery(tmp_path, "plugins", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return {p["name"] for p in json.loads(result.stdout) if p["enabled"]}


def test_plugin_selection_file_then_env_then_flags(tmp_path: Path) -> None:
    """A plugin disabled in the file is enabled again by the env or a flag, as documented."""
    (tmp_path / "exo-discovery.toml").write_text('[plugins]\ndisabled = ["headscale"]\n')
    assert "headscale" not in _enabled(tmp_path)
    assert _enabled(tmp_path, "--plugins", "headscale") == {"headscale"}
    assert _enabled(tmp_path, env={"EXO_DISCOVERY_PLUGINS": "headscale"}) == {"headscale"}
    # the flag overrides the env in turn
    assert "headscale" not in _enabled(
        tmp_path, "--disable-plugin", "headscale", env={"EXO_DISCOVERY_PLUGINS": "headscale,mdns"}
    )
    assert _enabled(
        tmp_path, "--plugins", "headscale", env={"EXO_DISCOVERY_DISABLE_PLUGINS": "headscale"}
    ) == {"headscale"}


def test_short_verbosity_flags_reach_click_in_their_long_form() -> None:
    """click tries a short option as a long one first and builds suggestions for the miss
    (difflib, in every node started with -v): -v, -vv, -q and -vq go to it spelt out."""
    from exo_discovery_core.cli import long_flags

    assert long_flags(["-vv", "run", "-q", "--port", "0", "-vq"]) == [
        "--verbose", "--verbose", "run", "--quiet", "--port", "0", "--verbose", "--quiet"
    ]  # fmt: skip
    assert long_flags(["run", "-h", "-x", "-", "--", "-v"]) == ["run", "-h", "-x", "-", "--", "-v"]


def test_a_value_that_looks_like_a_short_verbosity_flag_is_left_as_the_value() -> None:
    """``--namespace -v`` names the namespace "-v": the options of the real command that take a
    value keep what follows them; a flag (``--json``) does not."""
    from exo_discovery_core.cli import Prescan, Setup, build, long_flags, value_options

    args = ["run", "--namespace", "-v", "--json", "-v", "--port=-q", "-q"]
    values = value_options(build(Setup(Prescan(args))))
    assert {"--namespace", "--port", "--config"} <= values
    assert "--json" not in values and "--verbose" not in values
    assert long_flags(args, values) == [
        "run", "--namespace", "-v", "--json", "--verbose", "--port=-q", "--quiet"
    ]  # fmt: skip
