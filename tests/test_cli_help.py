"""One help text per option, rendered from its ``option(...)`` declaration: ``--help`` (grouped by
plugin, with defaults), ``doctor`` and an idle plugin's message say the same thing; ``plugins
--json`` lists each plugin's hooks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from exo_discovery_bootstrap.plugin import BootstrapConfig
from exo_discovery_core.optionhelp import option_helps
from tests.support.cli import exo_discovery


def _section(help_text: str, title: str) -> str:
    """The lines of one section of ``--help`` (up to the next unindented line)."""
    lines = help_text.splitlines()
    start = lines.index(f"{title}:")
    body = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        body.append(line)
    return " ".join(" ".join(body).split())


def test_run_help_groups_flags_by_plugin_and_shows_each_default(tmp_path: Path) -> None:
    result = exo_discovery(tmp_path, "run", "--help")
    assert result.returncode == 0, result.stderr
    node = _section(result.stdout, "Node options ([node])")
    bootstrap = _section(result.stdout, "Plugin bootstrap ([plugins.bootstrap])")
    headscale = _section(result.stdout, "Plugin headscale ([plugins.headscale])")
    assert "--port VALUE" in node and "default: 52417" in node and "--bootstrap" not in node
    assert "--bootstrap-refresh-interval VALUE" in bootstrap and "default: 2.0" in bootstrap
    assert "--headscale-api-url" in headscale and "--bootstrap" not in headscale
    # each flag's help is its option's one help text: what it does, key, env var, default
    unwrapped = re.sub(r"\s", "", bootstrap)  # click wraps and may break at a hyphen
    for helped in option_helps(BootstrapConfig, "[plugins.bootstrap]"):
        if helped.flag:
            assert re.sub(r"\s", "", helped.flag_help) in unwrapped
    doctor = exo_discovery(tmp_path, "doctor", "--help")
    assert _section(doctor.stdout, "Plugin bootstrap ([plugins.bootstrap])") == bootstrap


def test_an_idle_plugin_says_how_to_configure_it_in_the_log_and_in_doctor(tmp_path: Path) -> None:
    """Both texts come from headscale's option declarations, not from text the plugin wrote."""
    env = {"EXO_DISCOVERY_PLUGINS": "headscale", "EXO_DISCOVERY_PORT": "0"}
    checked = exo_discovery(tmp_path, "doctor", env=env)
    out = " ".join(checked.stdout.split())
    assert "stays idle" in out, checked.stdout
    for text in (
        "api_url ([plugins.headscale] api_url, --headscale-api-url, env HEADSCALE_API_URL)",
        "api_key ([plugins.headscale] api_key or api_key_file, --headscale-api-key, "
        "env HEADSCALE_API_KEY or HEADSCALE_API_KEY_FILE)",
    ):
        assert text in out


def test_plugins_json_lists_each_plugins_hooks(tmp_path: Path) -> None:
    result = exo_discovery(tmp_path, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    hooks = {p["name"]: p["hooks"] for p in json.loads(result.stdout)}
    assert hooks["bootstrap"] == ["config_model", "discover_peers", "doctor"]
    assert hooks["mdns"] == ["config_model", "discover_peers", "doctor"]
    assert all(re.fullmatch(r"[a-z_]+", hook) for names in hooks.values() for hook in names)
