"""The Tailscale plugin installed as a stranger would: a fresh venv with only the core in it.

The core is installed from the repo root (not editable), then the example plugin from its
folder; the installed ``exo-discovery`` command must list it, lose it on uninstall, take its
flags, and never import it when the config file disables it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import import_probe

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "examples" / "exo-discovery-tailscale"

# Runs the CLI's own entry function in-process, then reports whether the plugin got imported.
PROBE = import_probe(["exo_discovery_tailscale"])


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.bin = path / "bin"
        # No stray config or plugin selection from the machine running the tests.
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EXO_DISCOVERY_", "TAILSCALE_", "PYTHON", "VIRTUAL_ENV"))
        }
        self.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"

    def run(self, *argv: str, check: bool = True, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=240,
            env=self.env,
            cwd=cwd or self.path,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout + (proc.stderr if not check else "")

    def pip(self, *args: str) -> None:
        self.run(str(self.bin / "python"), "-m", "pip", "-q", *args)

    def plugins(self, *args: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(
            self.run(str(self.bin / "exo-discovery"), "plugins", "--json", *args)
        )
        return data

    def probe(self, *args: str) -> dict[str, Any]:
        data = json.loads(
            self.run(str(self.bin / "python"), "-c", PROBE, "plugins", "--json", *args)
        )
        return {"plugins": json.loads(data["out"]), "imported": bool(data["imported"])}


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv with only exo-discovery-core, installed from the repo root (not editable)."""
    path = tmp_path_factory.mktemp("stranger") / "venv"
    start = time.monotonic()
    venv.EnvBuilder(with_pip=True).create(path)
    env = Venv(path)
    env.pip("install", str(ROOT))
    print(f"\nvenv with the core ready in {time.monotonic() - start:.1f} s")
    yield env


def _names(plugins: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in plugins}


def test_install_list_uninstall_disable(core_venv: Venv, tmp_path: Path) -> None:
    env = core_venv
    assert "tailscale" not in _names(env.plugins())
    # Only the core: no editable checkout of anything leaks in.
    frozen = env.run(str(env.bin / "python"), "-m", "pip", "freeze")
    assert "exo-discovery-core" in frozen and "exo-discovery-tailscale" not in frozen
    assert "-e " not in frozen

    env.pip("install", str(PLUGIN_DIR))
    info = _names(env.plugins())["tailscale"]
    assert info["distribution"] == "exo-discovery-tailscale"
    assert info["version"] == "0.1.0"
    assert info["enabled"] is True and info["error"] is None

    env.pip("uninstall", "-y", "exo-discovery-tailscale")
    assert "tailscale" not in _names(env.plugins())

    env.pip("install", str(PLUGIN_DIR))
    enabled = env.probe()
    assert enabled["imported"] is True  # the probe can tell: an enabled plugin is imported
    config = tmp_path / "exo-discovery.toml"
    config.write_text("[plugins.tailscale]\nenabled = false\n")
    disabled = env.probe("--config", str(config))
    info = _names(disabled["plugins"])["tailscale"]
    assert info["enabled"] is False
    assert "[plugins.tailscale] enabled = false" in info["status"]
    assert disabled["imported"] is False


def test_flags_and_env_reach_the_installed_plugin(core_venv: Venv, tmp_path: Path) -> None:
    env = core_venv
    env.pip("install", str(PLUGIN_DIR))
    cli = str(env.bin / "exo-discovery")
    help_text = env.run(cli, "run", "--help")
    for flag in ("--tailscale-socket", "--tailscale-tag", "--tailscale-all-peers"):
        assert flag in help_text
    missing = tmp_path / "no-tailscaled.sock"
    out = env.run(
        cli, "doctor", "--plugins", "tailscale", "--tailscale-socket", str(missing), check=False
    )
    assert (
        f"no tailscaled on this machine (no socket at {missing}), so the plugin stays idle" in out
    )
    assert "start tailscaled" in out
    env.env["TAILSCALE_TAG"] = "exo"
    try:
        out = env.run(cli, "doctor", "--plugins", "tailscale", check=False)
    finally:
        del env.env["TAILSCALE_TAG"]
    assert "env TAILSCALE_TAG" in out and "not a Tailscale tag" in out
