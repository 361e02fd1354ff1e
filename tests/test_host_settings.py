"""A host program's settings in code: keyed by field name, checked exactly as the file is."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from exo_discovery_core import hookimpl, option
from exo_discovery_core.config import ConfigError, ConfigSource
from exo_discovery_core.node import Node


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = option("http://default", help="where", flag="--demo-url", env="DEMO_URL")


class Demo:
    @hookimpl
    def config_model(self) -> type[BaseModel]:
        return DemoConfig


def test_node_fields_by_name(tmp_path: Path) -> None:
    node = Node.from_settings(
        namespace="lab", port=0, listen_host="127.0.0.1", state_dir=tmp_path, entry_points=False
    )
    assert (node.config.namespace, node.config.port, node.config.listen_host) == (
        "lab",
        0,
        "127.0.0.1",
    )
    assert node.config.state_dir == tmp_path


def test_unknown_node_key_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        Node.from_settings(prot=0, entry_points=False)
    assert str(info.value).startswith(
        "settings [node] prot: unknown key (did you mean 'port'?) (known keys in [node]:"
    )


def test_bad_node_value_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        Node.from_settings(port=70000, entry_points=False)
    assert str(info.value).startswith("settings [node] port: ")
    assert "(node)" in str(info.value)


def test_plugin_settings_are_validated_by_the_plugins_model_at_once() -> None:
    node = Node.from_settings(
        plugins={"demo": {"url": "http://set"}}, register={"demo": Demo()}, entry_points=False
    )
    assert node.plugin_configs()["demo"].url == "http://set"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as info:
        Node.from_settings(
            plugins={"demo": {"uri": "http://x"}}, register={"demo": Demo()}, entry_points=False
        )
    assert str(info.value).startswith("settings [plugins.demo] uri: unknown key")


def test_settings_for_a_plugin_that_is_not_installed_are_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        Node.from_settings(
            plugins={"dmeo": {"url": "x"}}, register={"demo": Demo()}, entry_points=False
        )
    assert (
        "[plugins.dmeo] is not an installed plugin; did you mean [plugins.demo]? (installed: demo)"
        in str(info.value)
    )


def test_file_and_env_apply_only_when_asked_and_settings_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "exo-discovery.toml"
    path.write_text('[node]\nnamespace = "file-ns"\nheartbeat_interval = 3\n')
    monkeypatch.setenv("EXO_DISCOVERY_CONFIG", str(path))
    monkeypatch.setenv("EXO_DISCOVERY_PORT", "4000")

    alone = Node.from_settings(entry_points=False)
    assert (alone.config.namespace, alone.config.port) == ("exo", 52417)

    with_file = Node.from_settings(use_file=True, entry_points=False)
    assert (with_file.config.namespace, with_file.config.port) == ("file-ns", 52417)

    both = Node.from_settings(use_file=True, use_env=True, namespace="code", entry_points=False)
    assert (both.config.namespace, both.config.port) == ("code", 4000)
    assert both.config.heartbeat_interval == 3

    named = Node.from_settings(use_file=path, entry_points=False)
    assert named.config.namespace == "file-ns"


def test_plugin_choice_in_settings() -> None:
    only = Node.from_settings(plugins={"enabled": ["bootstrap"]})
    assert only.host.loaded() == ["bootstrap"]
    assert only.host.infos["mdns"].status == "not in settings [plugins] enabled"
    off = Node.from_settings(plugins={"disabled": ["mdns"], "bootstrap": {"enabled": False}})
    assert "mdns" not in off.host.loaded() and "bootstrap" not in off.host.loaded()
    assert off.host.infos["mdns"].status == "disabled by settings [plugins] disabled"


def test_flags_keyed_by_field_name_are_refused_not_ignored() -> None:
    with pytest.raises(ConfigError) as info:
        ConfigSource.load(None, env={}, flags={"port": 0})
    message = str(info.value)
    assert message.startswith("flags: 'port' is not a flag")
    assert "'--port'" in message and "settings=" in message


def test_a_flag_no_model_declares_is_refused() -> None:
    source = ConfigSource.load(None, env={}, flags={"--prot": "1"}, find_file=False)
    node = Node(source=source, entry_points=False)
    with pytest.raises(ConfigError, match=r"^flag --prot: no such flag"):
        node.plugin_configs()


def test_settings_have_the_files_shape() -> None:
    with pytest.raises(ConfigError, match=r"^settings: unknown top-level key 'nodes'"):
        ConfigSource.load(None, env={}, settings={"nodes": {}}, find_file=False)
    with pytest.raises(ConfigError, match=r"^settings: \[plugins\] demo must be a table"):
        ConfigSource.load(None, env={}, settings={"plugins": {"demo": 1}}, find_file=False)
