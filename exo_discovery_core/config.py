"""Configuration: one TOML file, then environment variables, then CLI flags, then settings a host
program passes in code, in rising precedence.

The node's own table is ``[node]``; each plugin's is ``[plugins.<name>]``, validated by the model the
plugin declares. Fields made with :func:`option` carry their flag, env var and help text, so the CLI,
the env and ``doctor`` all come from one declaration. Settings in code have the file's shape and are
keyed by field name (``{"node": {"port": 0}, "plugins": {"bootstrap": {"peers": [...]}}}``), so they
are checked exactly as the file is. Every error names where the bad value came from: the file and
key, the env var, the flag, or the setting.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from .clusterkey import ClusterKeyError, Keyring
from .identity import PeerId
from .interfacefilter import DEFAULT_EXCLUDE, InterfaceFilter
from .models import Address
from .optionhelp import option, option_meta  # option: the fields below are declared with it
from .routes import advertised

ModelT = TypeVar("ModelT", bound=BaseModel)

DEFAULT_PORT = 52417
DEFAULT_CONFIG_NAME = "exo-discovery.toml"
CONFIG_ENV = "EXO_DISCOVERY_CONFIG"
SETTINGS_LABEL = "settings"
PLUGINS_ENV = "EXO_DISCOVERY_PLUGINS"
DISABLE_ENV = "EXO_DISCOVERY_DISABLE_PLUGINS"
_RESERVED_PLUGIN_KEYS = ("enabled", "disabled")


class ConfigError(ValueError):
    """A configuration problem; the message names the file, key, env var or flag at fault."""


def default_state_dir() -> Path:
    """The platform's state dir for exo-discovery (``~/.local/state/exo-discovery`` on Linux);
    platformdirs is imported only when no state dir is given."""
    import platformdirs

    return Path(platformdirs.user_state_dir("exo-discovery"))


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing when none is close."""
    import difflib  # here: only a config with a mistake in it needs it

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class NodeConfig(BaseModel):
    """The ``[node]`` table: who the node is and how it listens and keeps connections."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    namespace: str = option(
        "exo",
        help="Cluster name; nodes of other namespaces are never joined",
        flag="--namespace",
        env="EXO_DISCOVERY_NAMESPACE",
        min_length=1,
        max_length=63,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    )
    listen_host: str = option(
        "",
        help="Address to listen on; empty for every interface, IPv4 and IPv6",
        flag="--listen-host",
        env="EXO_DISCOVERY_LISTEN_HOST",
    )
    port: int = option(
        DEFAULT_PORT,
        help="TCP port to listen on (0 for any free port)",
        flag="--port",
        env="EXO_DISCOVERY_PORT",
        ge=0,
        le=65535,
    )
    state_dir: Path = option(
        default_factory=default_state_dir,
        help="Where the node keeps its key and status socket",
        flag="--state-dir",
        env="EXO_DISCOVERY_STATE_DIR",
    )
    interfaces: tuple[str, ...] = option(
        ("*",),
        help="Interfaces (globs, e.g. en*) whose addresses the node advertises and where mDNS "
        "runs; comma-separated in the flag and env",
        flag="--interfaces",
        env="EXO_DISCOVERY_INTERFACES",
    )
    exclude_interfaces: tuple[str, ...] = option(
        DEFAULT_EXCLUDE,
        help="Interfaces (globs) left out of interfaces; by default container and virtual "
        "bridges (docker*, br-*, veth*, virbr*), never Tailscale",
        flag="--exclude-interfaces",
        env="EXO_DISCOVERY_EXCLUDE_INTERFACES",
    )
    advertise_addresses: tuple[str, ...] = option(
        (),
        help="Advertise these addresses (IP or name, optionally :port) instead of the "
        "interfaces' (behind NAT, in a container); comma-separated in the flag and env",
        flag="--advertise-addresses",
        env="EXO_DISCOVERY_ADVERTISE_ADDRESSES",
    )
    connect: bool = option(
        True,
        help="Dial and keep connections to peers (false: discover only, or a host program reports them)",
        flag="--connect",
        env="EXO_DISCOVERY_CONNECT",
    )
    verify: bool = option(
        True,
        help="With connect = false, still verify each candidate with one handshake (its id, its signed record); false: the node dials nothing at all",
        flag="--verify",
        env="EXO_DISCOVERY_VERIFY",
    )
    max_connections: int | None = option(
        None,
        help="Connections this node keeps at most (default: one to every member); every member "
        "is still known, through the signed records its connections relay",
        flag="--max-connections",
        env="EXO_DISCOVERY_MAX_CONNECTIONS",
        ge=1,
    )
    exchange: bool = option(
        True,
        help="Tell connected peers whom we are connected to, so one known peer leads to all",
        flag="--exchange",
        env="EXO_DISCOVERY_EXCHANGE",
    )
    heartbeat_interval: float = option(
        0.75,
        help="Seconds between heartbeats to the peer that watches this node (its ring "
        "successor); they go round the ring as one wave, and a node the wave misses "
        "heartbeats on its own after 1.25 of these, within the 1.5 s of silence that makes "
        "a suspicion",
        gt=0,
        le=60,
    )
    dead_after: float = option(
        2.5,
        help="Seconds of silence (suspicion, then an unanswered probe) before a peer is declared disconnected",
        gt=0,
        le=600,
    )
    handshake_timeout: float = option(
        5.0,
        help="Seconds a peer has to complete the handshake",
        gt=0,
        le=120,
    )
    cluster_key_file: Path | None = option(
        None,
        help="File of the cluster key (`exo-discovery keygen`); one key a line, the first dials",
        flag="--cluster-key-file",
        env="EXO_DISCOVERY_CLUSTER_KEY_FILE",
    )
    cluster_key: SecretStr | None = option(
        None,
        help="The cluster key itself, for containers (prefer cluster_key_file)",
        env="EXO_DISCOVERY_CLUSTER_KEY",
    )
    trusted_peers: tuple[PeerId, ...] = option(
        (),
        help="If set, only these peer ids are connected; any other is refused, both ways",
        env="EXO_DISCOVERY_TRUSTED_PEERS",
    )
    peer_ttl: float = option(
        300.0,
        help="Seconds a failing plugin's last peers are kept while it restarts",
        ge=0,
    )
    redial_max: float = option(
        2.0,
        help="Cap of the backoff between dials of an unreachable candidate",
        gt=0,
    )
    plugin_restart_max: float = option(
        60.0,
        help="Cap of the backoff between restarts of a failing plugin",
        gt=0,
    )
    meta: dict[str, str] = option(
        {},
        help="Metadata this node publishes in its signed record, KEY=VALUE (repeatable; at most "
        "32 keys and 1 KiB in all); env and flags add to [node.meta]",
        flag="--meta",
        env="EXO_DISCOVERY_META",
    )
    # -- bounds: what the network may cost the node (limits.py; defaults in the README) --------
    max_inbound_connections: int = option(
        1024,
        help="Inbound connections at once, handshaking or connected (never more than the "
        "open-file limit less 64)",
        ge=1,
    )
    max_inbound_per_ip: int = option(
        64, help="Inbound connections at once from one IP address", ge=1
    )
    max_handshakes: int = option(64, help="Inbound handshakes under way at once", ge=1)
    frame_rate: float = option(
        50.0,
        help="Frames a second read from one connection; past it the peer is slowed down",
        gt=0,
    )
    frame_burst: int = option(200, help="Frames read at once before frame_rate applies", ge=1)
    exchange_peers_per_sender: int = option(
        64, help="Peers taken from one connected peer's exchange", ge=0
    )
    exchange_peers_max: int = option(
        256, help="Peers known through exchange in all (first come)", ge=0
    )
    learned_dial_rate: float = option(
        5.0, help="Dials a second of peers known only through exchange", gt=0
    )
    learned_dial_burst: int = option(
        20, help="Dials of peers known only through exchange made at once", ge=1
    )

    @field_validator("meta")
    @classmethod
    def _check_meta(cls, meta: dict[str, str]) -> dict[str, str]:
        from .records import check_meta

        return check_meta(meta)

    @field_validator("cluster_key_file")
    @classmethod
    def _check_key_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            _keyring_from_file(path)
        return path

    @field_validator("cluster_key")
    @classmethod
    def _check_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None:
            Keyring.parse(key.get_secret_value())
        return key

    @model_validator(mode="after")
    def _one_key_source(self) -> NodeConfig:
        if self.cluster_key is not None and self.cluster_key_file is not None:
            raise ValueError("set cluster_key or cluster_key_file, not both")
        return self

    def keyring(self) -> Keyring:
        """The cluster keys (primary first); empty without a key. Read at start."""
        if self.cluster_key_file is not None:
            try:
                return _keyring_from_file(self.cluster_key_file)
            except ClusterKeyError as exc:  # changed since the config was read
                raise ConfigError(f"[node] cluster_key_file: {exc}") from None
        if self.cluster_key is not None:
            return Keyring.parse(self.cluster_key.get_secret_value(), "cluster_key")
        return Keyring()

    @field_validator("advertise_addresses")
    @classmethod
    def _valid_advertised(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from .targetgroups import target_address  # here: models (which it needs) import config

        for text in value:
            try:
                target_address(text, DEFAULT_PORT)
            except ValueError as exc:
                raise ValueError(f"{text!r} is not HOST or HOST:PORT ({exc})") from None
        return value

    @property
    def interface_filter(self) -> InterfaceFilter:
        return InterfaceFilter(self.interfaces, self.exclude_interfaces)

    def advertised(self, port: int) -> tuple[Address, ...]:
        """Where peers can reach this node at ``port`` (its signed record, what plugins announce):
        ``advertise_addresses`` when set (NAT, a container), else each address of the
        interfaces ``interfaces`` allows."""
        return advertised(port, self.advertise_addresses, self.listen_host, self.interface_filter)


def _keyring_from_file(path: Path) -> Keyring:
    try:
        text = path.expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterKeyError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    except ValueError:
        raise ClusterKeyError(f"{str(path)!r} is not a key file (not text)") from None
    return Keyring.parse(text, str(path))


@dataclass
class Layer:
    """Raw values of one source (file, env, flags) with the name of each value's origin."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def set(self, key: str, value: Any, origin: str) -> None:
        self.values[key] = value
        self.origins[key] = origin


@dataclass
class ConfigSource:
    """The file, the environment, the flags and the host's settings, not yet validated.

    ``flags`` are keyed as on the command line (``{"--port": "0"}``); ``settings`` have the file's
    shape and are keyed by field name (``{"node": {"port": 0}}``).
    """

    file: Path | None = None
    file_data: dict[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    flags: dict[str, Any] = field(default_factory=dict)
    enable_flag: list[str] | None = None
    disable_flag: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """Problems that do not stop the node (a disabled plugin that is not installed)."""
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(
        cls,
        node: Mapping[str, Any],
        plugins: Mapping[str, Any],
        *,
        use_file: bool | Path = False,
        use_env: bool = False,
    ) -> ConfigSource:
        """Settings in code, keyed by field name as in the file, over the file (found as the CLI
        finds it with ``use_file=True``; a path names it) and the environment, only if asked."""
        path = use_file if isinstance(use_file, Path) else None
        if use_file is True and os.environ.get(CONFIG_ENV):
            path = Path(os.environ[CONFIG_ENV])
        settings = {"node": dict(node), "plugins": dict(plugins)}
        env: dict[str, str] | None = None if use_env else {}
        return cls.load(path, env=env, settings=settings, find_file=use_file is True)

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        *,
        env: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
        enable: list[str] | None = None,
        disable: list[str] | None = None,
        settings: Mapping[str, Any] | None = None,
        find_file: bool = True,
    ) -> ConfigSource:
        """Find and parse the file (``path``, else, with ``find_file``, ``$EXO_DISCOVERY_CONFIG`` or
        ``./exo-discovery.toml``); ``settings`` lie over the file, the env and the flags."""
        environ = dict(os.environ if env is None else env)
        for key in flags or {}:
            if not key.startswith("--"):
                raise ConfigError(
                    f"flags: {key!r} is not a flag; flags are spelled as on the command line "
                    f"('--{key.replace('_', '-')}'); to set a field by name pass "
                    f"settings={{'node': {{{key!r}: ...}}}}"
                )
        if path is None and find_file and environ.get(CONFIG_ENV):
            path = Path(environ[CONFIG_ENV])
        elif path is None and find_file and Path(DEFAULT_CONFIG_NAME).is_file():
            path = Path(DEFAULT_CONFIG_NAME)
        data: dict[str, Any] = {}
        if path is not None:
            import tomllib  # here: most nodes and commands read no file

            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise ConfigError(f"{path}: config file not found") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read config file: {exc}") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from None
            except RecursionError:
                raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
        source = cls(
            path,
            data,
            environ,
            dict(flags or {}),
            enable,
            list(disable or []),
            settings=dict(settings or {}),
        )
        _check_tables(source.file_data, source.file_label)
        _check_tables(source.settings, SETTINGS_LABEL)
        return source

    @property
    def file_label(self) -> str:
        return str(self.file) if self.file else "config"

    def _tables(self) -> list[tuple[dict[str, Any], str]]:
        """The table-shaped sources, lowest first: the file, then the host's settings."""
        return [(self.file_data, self.file_label), (self.settings, SETTINGS_LABEL)]

    def check_flags_of(self, models: Iterable[type[BaseModel]]) -> None:
        """Every flag given must be one of these models' fields declares."""
        flags = {option_meta(info)[0] for model in models for info in model.model_fields.values()}
        self.check_flags({flag for flag in flags if flag})

    def check_flags(self, known: set[str]) -> None:
        """Every flag given must be one a model declares (the CLI only makes those)."""
        for flag in self.flags:
            if flag not in known:
                raise ConfigError(f"flag {flag}: no such flag (known: {', '.join(sorted(known))})")

    # -- plugin selection -------------------------------------------------------------------

    def plugin_selection(self, installed: list[str]) -> dict[str, str]:
        """Which installed plugins run: name -> 'enabled' or why it is disabled.

        Precedence: file < env < flags. Each layer may name the only plugins to run (``enabled``,
        ``EXO_DISCOVERY_PLUGINS``, ``--plugins``) and plugins to leave out; a later layer's choice
        replaces an earlier one's for the plugins it names. Naming a plugin to run that is not
        installed is an error; one to leave out is a warning (one config serves machines with
        different plugins installed).
        """
        self.check_plugin_tables(installed)
        selection = {name: "enabled" for name in installed}
        for only, off in self._selection_layers():
            if only is not None:
                names, origin = only
                self._check_installed(names, origin, installed)
                for name in installed:
                    selection[name] = "enabled" if name in names else f"not in {origin}"
            for name, origin in off:
                if name in installed:
                    selection[name] = f"disabled by {origin}"
                else:
                    listing = ", ".join(sorted(installed)) or "none"
                    self.warnings.append(
                        f"{origin}: plugin {name!r} is not installed, nothing to disable"
                        f"{did_you_mean(name, installed)} (installed: {listing})"
                    )
        return selection

    def _selection_layers(
        self,
    ) -> list[tuple[tuple[list[str], str] | None, list[tuple[str, str]]]]:
        """For the file, the env, the flags and the settings: (the only plugins to run, plugins to
        leave out)."""
        env_only = None
        if PLUGINS_ENV in self.env:
            env_only = (_split(self.env[PLUGINS_ENV]), f"env {PLUGINS_ENV}")
        env_off = [(n, f"env {DISABLE_ENV}") for n in _split(self.env.get(DISABLE_ENV, ""))]
        flag_only = (self.enable_flag, "flag --plugins") if self.enable_flag is not None else None
        flag_off = [(n, "flag --disable-plugin") for n in self.disable_flag]
        return [
            _selection_of_table(self.file_data, self.file_label),
            (env_only, env_off),
            (flag_only, flag_off),
            _selection_of_table(self.settings, SETTINGS_LABEL),
        ]

    def check_plugin_tables(self, installed: list[str]) -> None:
        """A ``[plugins.NAME]`` table (in the file or the settings) for no installed plugin is a
        typo or a missing install."""
        for data, label in self._tables():
            for name, table in data.get("plugins", {}).items():
                if isinstance(table, dict) and name not in installed:
                    import difflib

                    listing = ", ".join(sorted(installed)) or "none"
                    close = difflib.get_close_matches(name, installed, n=1)
                    fix = (
                        f"did you mean [plugins.{close[0]}]?"
                        if close
                        else f"install exo-discovery-{name} or remove the table"
                    )
                    raise ConfigError(
                        f"{label}: [plugins.{name}] is not an installed plugin; {fix} "
                        f"(installed: {listing})"
                    )

    @staticmethod
    def _check_installed(names: list[str], origin: str, installed: list[str]) -> None:
        for name in names:
            if name not in installed:
                listing = ", ".join(sorted(installed)) or "none"
                raise ConfigError(
                    f"{origin}: plugin {name!r} is not installed"
                    f"{did_you_mean(name, installed)} (installed: {listing})"
                )

    # -- validation ------------------------------------------------------------------------

    def node_config(self) -> NodeConfig:
        return self.validate(
            NodeConfig,
            self.file_data.get("node", {}),
            "[node]",
            owner="node",
            settings=self.settings.get("node", {}),
        )

    def plugin_config(self, name: str, model: type[BaseModel]) -> BaseModel:
        return self.plugin_config_from(
            name,
            model,
            self.file_data.get("plugins", {}).get(name, {}),
            settings=self.settings.get("plugins", {}).get(name, {}),
        )

    def plugin_config_from(
        self,
        name: str,
        model: type[BaseModel],
        table: Mapping[str, Any],
        *,
        settings: Mapping[str, Any] | None = None,
    ) -> BaseModel:
        """Validate ``table`` (a plugin's table) with env, flags and ``settings`` laid over it."""
        tables = [dict(table), dict(settings or {})]
        for each in tables:
            for key in _RESERVED_PLUGIN_KEYS:
                each.pop(key, None)
        return self.validate(
            model, tables[0], f"[plugins.{name}]", owner=f"plugin {name!r}", settings=tables[1]
        )

    def validate(
        self,
        model: type[ModelT],
        table: Mapping[str, Any],
        table_name: str,
        *,
        owner: str,
        settings: Mapping[str, Any] | None = None,
    ) -> ModelT:
        layer = Layer()
        fields = model.model_fields
        _lay_table(layer, fields, table, f"{self.file_label} {table_name}", table_name)
        for name, info in fields.items():
            flag, env, secret = option_meta(info)
            if env and _is_set(self.env.get(env)):
                origin = f"env {env}"
                layer.set(
                    name, _from_text(self.env[env], info, layer.values.get(name), origin), origin
                )
            if secret and env and _is_set(self.env.get(f"{env}_FILE")):
                origin = f"env {env}_FILE"
                layer.set(name, _read_secret(self.env[f"{env}_FILE"], origin), origin)
            if flag and _is_set(self.flags.get(flag)) and self.flags.get(flag) != ():
                value, origin = self.flags[flag], f"flag {flag}"
                if isinstance(value, str) or _is_mapping(info.annotation):
                    value = _from_text(value, info, layer.values.get(name), origin)
                layer.set(name, value, origin)
        _lay_table(layer, fields, settings or {}, f"{SETTINGS_LABEL} {table_name}", table_name)
        try:
            return model.model_validate(layer.values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, layer, table_name, owner, self.file_label)) from None


def _check_tables(data: Mapping[str, Any], label: str) -> None:
    """The shape the file and the settings share: ``node`` and ``plugins`` tables."""
    for key, value in data.items():
        if key not in ("node", "plugins"):
            raise ConfigError(
                f"{label}: unknown top-level key {key!r}"
                f"{did_you_mean(key, ('node', 'plugins'))} (expected [node] or [plugins])"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{label}: {key!r} must be a table ([{key}])")
    for key, value in data.get("plugins", {}).items():
        if key in _RESERVED_PLUGIN_KEYS:
            if not _is_str_list(value):
                raise ConfigError(f"{label}: [plugins] {key} must be a list of names")
        elif not isinstance(value, dict):
            hint = did_you_mean(key, _RESERVED_PLUGIN_KEYS)
            if hint:
                raise ConfigError(f"{label}: [plugins] unknown key {key!r}{hint}")
            raise ConfigError(
                f"{label}: [plugins] {key} must be a table ([plugins.{key}]); "
                f"to turn it off write `enabled = false` in it or list it in disabled"
            )


def _selection_of_table(
    data: Mapping[str, Any], label: str
) -> tuple[tuple[list[str], str] | None, list[tuple[str, str]]]:
    """The plugin choice of the file or the settings: (the only plugins to run, to leave out)."""
    plugins = data.get("plugins", {})
    only = (plugins["enabled"], f"{label} [plugins] enabled") if "enabled" in plugins else None
    off = [(n, f"{label} [plugins] disabled") for n in plugins.get("disabled", [])]
    for name, table in plugins.items():
        if isinstance(table, dict) and table.get("enabled") is False:
            off.append((name, f"{label} [plugins.{name}] enabled = false"))
        elif isinstance(table, dict) and "enabled" in table and table["enabled"] is not True:
            raise ConfigError(f"{label}: [plugins.{name}] enabled must be true or false")
    return only, off


def _lay_table(
    layer: Layer,
    fields: Mapping[str, FieldInfo],
    table: Mapping[str, Any],
    label: str,
    table_name: str,
) -> None:
    """Lay a table of the file or of the settings (keyed by field name) over ``layer``."""
    for key, value in table.items():
        origin = f"{label} {key}"
        base = key.removesuffix("_file")
        if key != base and base in fields and option_meta(fields[base])[2]:
            layer.set(base, _read_secret(str(value), origin), origin)
        elif key in fields:
            layer.set(key, value, origin)
        else:
            known = ", ".join(fields) or "none"
            raise ConfigError(
                f"{origin}: unknown key{did_you_mean(key, fields)} "
                f"(known keys in {table_name}: {known})"
            )


def _describe(
    exc: ValidationError, layer: Layer, table_name: str, owner: str, file_label: str
) -> str:
    """One line per error, naming the origin of the value and never echoing its content."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        key = str(err["loc"][0]) if err["loc"] else ""
        if key:
            origin = layer.origins.get(key, f"{table_name} {key} (default)")
        else:  # a check of the table as a whole: name the table and where it came from
            origin = f"{file_label} {table_name}"
        # a list item is named as people count (item 1 is the first), not by its index
        where = "".join(f" item {p + 1}" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
        message = _PLAIN_MESSAGES.get(err["type"]) or str(err["msg"]).removeprefix("Value error, ")
        if err["type"] in ("list_type", "tuple_type", "set_type") and isinstance(
            layer.values.get(key), str
        ):
            message = f'a list is needed, not one string: write {key} = ["..."]'
        lines.append(f"{origin}{where}: {message} ({owner})")
    return "\n".join(lines)


_PLAIN_MESSAGES = {  # pydantic's wording for text that is not what the field needs
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "bool_parsing": "expected true or false",
}


def _read_secret(path: str, origin: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {path!r}: {exc.strerror}") from None
    except ValueError as exc:  # a NUL in the path, a file that is not UTF-8
        raise ConfigError(f"{origin}: cannot read {path!r}: {exc}") from None


def _is_set(value: Any) -> bool:
    """An env var or flag that is absent, empty or only white space leaves the option unset."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _from_text(text: str | Sequence[str], info: FieldInfo, below: Any, origin: str) -> Any:
    """Env vars and flags are text: a list-typed field takes comma-separated items; a table
    (``meta``) takes KEY=VALUE items (comma-separated, or one per repeated flag), laid over
    what the layers below set."""
    if _is_mapping(info.annotation):
        items = _split(text) if isinstance(text, str) else list(text)
        table = dict(below) if isinstance(below, dict) else {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{origin}: {item[:60]!r} is not KEY=VALUE")
            table[key.strip()] = value.strip()
        return table
    assert isinstance(text, str)
    return _split(text) if _is_sequence(info.annotation) else text


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict


def _is_sequence(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(arg) for arg in typing.get_args(annotation))
    return origin in (list, tuple, set, frozenset)
