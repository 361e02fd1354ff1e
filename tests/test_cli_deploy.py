"""What docs/deploy.md promises: the systemd unit passes ``systemd-analyze verify``, and shell
completion works through click's ``_EXO_DISCOVERY_COMPLETE``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import EXO_DISCOVERY, exo_discovery

UNIT = Path(__file__).resolve().parent.parent / "docs" / "exo-discovery.service"
INSTALLED_AT = "/opt/exo-discovery/bin/exo-discovery"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)
def test_the_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified with ExecStart pointing at this installation (verify checks it is executable)."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_AT} run\n" in text
    unit = tmp_path / "exo-discovery.service"
    unit.write_text(text.replace(INSTALLED_AT, EXO_DISCOVERY))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # unknown keys and bad values are warnings with exit code 0: none may be printed
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_units_command_line_is_one_the_cli_accepts(tmp_path: Path) -> None:
    result = exo_discovery(tmp_path, "run", "--help")
    assert result.returncode == 0 and "Start the node" in result.stdout


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "_exo_discovery_completion()"),
        ("zsh", "#compdef exo-discovery"),
        ("fish", "function _exo_discovery_completion"),
    ],
)
def test_shell_completion_scripts(tmp_path: Path, shell: str, marker: str) -> None:
    result = exo_discovery(tmp_path, env={"_EXO_DISCOVERY_COMPLETE": f"{shell}_source"})
    assert result.returncode == 0 and result.stderr == ""
    assert marker in result.stdout


def test_completion_offers_commands_and_the_plugins_flags(tmp_path: Path) -> None:
    def complete(words: str) -> list[str]:
        env = {
            "_EXO_DISCOVERY_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        }
        result = exo_discovery(tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert complete("exo-discovery pl") == ["plugins"]
    assert {"--bootstrap-peers", "--bootstrap-peers-file"} <= set(
        complete("exo-discovery run --bootstrap-p")
    )
