"""Configuration: file < env < flags, errors that name their origin, secrets from env or file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from exo_discovery_core.config import ConfigError, ConfigSource
from exo_discovery_core.optionhelp import option


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = option("http://default", help="where", flag="--demo-url", env="DEMO_URL")
    interval: float = option(5.0, help="how often", flag="--demo-interval", gt=0)
    peers: list[str] = option([], help="peers", flag="--demo-peers", env="DEMO_PEERS")
    key: SecretStr | None = option(
        None, help="secret", flag="--demo-key", env="DEMO_KEY", secret=True
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exo-discovery.toml"
    path.write_text(text)
    return path


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[plugins.demo]\nurl = "http://file"\ninterval = 2\n')
    only_file = ConfigSource.load(path, env={})
    assert only_file.plugin_config("demo", DemoConfig).url == "http://file"  # type: ignore[attr-defined]
    with_env = ConfigSource.load(path, env={"DEMO_URL": "http://env"})
    assert with_env.plugin_config("demo", DemoConfig).url == "http://env"  # type: ignore[attr-defined]
    with_flag = ConfigSource.load(
        path, env={"DEMO_URL": "http://env"}, flags={"--demo-url": "http://flag"}
    )
    config = with_flag.plugin_config("demo", DemoConfig)
    assert config.url == "http://flag"  # type: ignore[attr-defined]
    assert config.interval == 2  # type: ignore[attr-defined]


def test_lists_from_env_and_flags_are_comma_separated(tmp_path: Path) -> None:
    source = ConfigSource.load(None, env={"DEMO_PEERS": "a:1, b:2,,"})
    assert source.plugin_config("demo", DemoConfig).peers == ["a:1", "b:2"]  # type: ignore[attr-defined]


def test_config_file_found_through_env_var(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nnamespace = "lab"\n')
    source = ConfigSource.load(None, env={"EXO_DISCOVERY_CONFIG": str(path)})
    assert source.node_config().namespace == "lab"


@pytest.mark.parametrize(
    ("toml", "env", "flags", "expected"),
    [
        (
            "[plugins.demo]\ninterval = -1\n",
            {},
            {},
            "[plugins.demo] interval: Input should be greater than 0 (plugin 'demo')",
        ),
        (
            "",
            {},
            {"--demo-interval": "soon"},
            "flag --demo-interval: expected a number (plugin 'demo')",
        ),
        (
            "[plugins.demo]\nurll = 1\n",
            {},
            {},
            "[plugins.demo] urll: unknown key (did you mean 'url'?) (known keys in [plugins.demo]: url, interval, peers, key)",
        ),
        (
            "[node]\nport = 70000\n",
            {},
            {},
            "[node] port: Input should be less than or equal to 65535 (node)",
        ),
        (
            "",
            {"EXO_DISCOVERY_PORT": "http"},
            {},
            "env EXO_DISCOVERY_PORT: expected a whole number (node)",
        ),
        ("[nodes]\nport = 1\n", {}, {}, "unknown top-level key 'nodes'"),
        ("[node\n", {}, {}, "not valid TOML"),
    ],
)
def test_errors_name_the_file_key_env_or_flag(
    tmp_path: Path, toml: str, env: dict[str, str], flags: dict[str, str], expected: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as caught:
        source = ConfigSource.load(path, env=env, flags=flags)
        source.node_config()
        source.plugin_config("demo", DemoConfig)
    assert expected in str(caught.value)
    if "[plugins" in expected or "[node]" in expected or "TOML" in expected:
        assert str(path) in str(caught.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        ConfigSource.load(tmp_path / "nope.toml", env={})


def test_secret_from_env_file_and_config_file_never_echoed(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-from-file\n")
    source = ConfigSource.load(None, env={"DEMO_KEY_FILE": str(key_file)})
    config = source.plugin_config("demo", DemoConfig)
    assert config.key.get_secret_value() == "s3cret-from-file"  # type: ignore[attr-defined]
    assert "s3cret" not in repr(config) and "s3cret" not in str(config)
    path = write(tmp_path, f'[plugins.demo]\nkey_file = "{key_file}"\n')
    from_table = ConfigSource.load(path, env={}).plugin_config("demo", DemoConfig)
    assert from_table.key.get_secret_value() == "s3cret-from-file"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="env DEMO_KEY_FILE: cannot read"):
        ConfigSource.load(None, env={"DEMO_KEY_FILE": str(tmp_path / "missing")}).plugin_config(
            "demo", DemoConfig
        )


def test_validation_errors_do_not_echo_secret_values(tmp_path: Path) -> None:
    class Strict(BaseModel):
        key: SecretStr = option(..., help="k", env="K", secret=True, min_length=50)

    with pytest.raises(ConfigError) as caught:
        ConfigSource.load(None, env={"K": "hunter2-distinctive"}).plugin_config("demo", Strict)
    assert "hunter2-distinctive" not in str(caught.value)
    assert "env K" in str(caught.value)


def test_plugin_selection_precedence_and_unknown_names(tmp_path: Path) -> None:
    installed = ["bootstrap", "headscale", "mdns"]
    path = write(tmp_path, '[plugins]\ndisabled = ["headscale"]\n[plugins.mdns]\nenabled = false\n')
    selection = ConfigSource.load(path, env={}).plugin_selection(installed)
    assert selection["bootstrap"] == "enabled"
    assert "disabled" in selection["headscale"] and "disabled" in selection["mdns"]
    only = ConfigSource.load(None, env={"EXO_DISCOVERY_PLUGINS": "mdns"}).plugin_selection(
        installed
    )
    assert [n for n, s in only.items() if s == "enabled"] == ["mdns"]
    none = ConfigSource.load(None, env={"EXO_DISCOVERY_PLUGINS": ""}).plugin_selection(installed)
    assert not [n for n, s in none.items() if s == "enabled"]
    flags = ConfigSource.load(
        None, env={"EXO_DISCOVERY_PLUGINS": "mdns"}, enable=["bootstrap"], disable=["mdns"]
    ).plugin_selection(installed)
    assert [n for n, s in flags.items() if s == "enabled"] == ["bootstrap"]
    with pytest.raises(ConfigError) as caught:
        ConfigSource.load(None, env={"EXO_DISCOVERY_PLUGINS": "mdsn"}).plugin_selection(installed)
    assert str(caught.value) == (
        "env EXO_DISCOVERY_PLUGINS: plugin 'mdsn' is not installed (did you mean 'mdns'?) "
        "(installed: bootstrap, headscale, mdns)"
    )


def test_disabling_a_plugin_that_is_not_installed_is_a_warning() -> None:
    installed = ["bootstrap", "mdns"]
    source = ConfigSource.load(None, env={"EXO_DISCOVERY_DISABLE_PLUGINS": "tailscale"})
    selection = source.plugin_selection(installed)
    assert selection == {"bootstrap": "enabled", "mdns": "enabled"}
    assert source.warnings == [
        "env EXO_DISCOVERY_DISABLE_PLUGINS: plugin 'tailscale' is not installed, nothing to "
        "disable (installed: bootstrap, mdns)"
    ]


@pytest.mark.parametrize(
    ("env", "enable", "disable", "expected"),
    [
        ({}, None, [], "disabled by"),
        ({"EXO_DISCOVERY_PLUGINS": "headscale"}, None, [], "enabled"),
        ({}, ["headscale"], [], "enabled"),
        ({"EXO_DISCOVERY_DISABLE_PLUGINS": "headscale"}, ["headscale"], [], "enabled"),
        ({"EXO_DISCOVERY_PLUGINS": "headscale"}, None, ["headscale"], "disabled by flag"),
        ({"EXO_DISCOVERY_PLUGINS": "mdns"}, None, [], "not in env"),
    ],
)
def test_plugin_selection_file_then_env_then_flags(
    tmp_path: Path, env: dict[str, str], enable: list[str] | None, disable: list[str], expected: str
) -> None:
    """Each layer overrides the one before for the plugins it names, as the README says."""
    path = write(tmp_path, '[plugins]\ndisabled = ["headscale"]\n')
    source = ConfigSource.load(path, env=env, enable=enable, disable=disable)
    assert source.plugin_selection(["headscale", "mdns"])["headscale"].startswith(expected)


def test_a_table_of_no_installed_plugin_is_an_error_naming_the_installed(tmp_path: Path) -> None:
    path = write(tmp_path, '[plugins.bootstrp]\npeers = ["10.0.0.2:52417"]\n')
    with pytest.raises(ConfigError) as caught:
        ConfigSource.load(path, env={}).plugin_selection(["bootstrap", "mdns"])
    assert str(caught.value) == (
        f"{path}: [plugins.bootstrp] is not an installed plugin; did you mean "
        "[plugins.bootstrap]? (installed: bootstrap, mdns)"
    )
