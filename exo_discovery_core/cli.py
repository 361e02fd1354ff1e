"""The ``exo-discovery`` command: run, plugins, peers, doctor, id.

Plugins add their own flags: the enabled plugins' config models are read before the command line
is parsed (after a first look for --config, --plugins and --disable-plugin, so a plugin disabled
there is never imported), and each field declared with a ``flag`` becomes an option of ``run`` and
``doctor``.
"""

from __future__ import annotations

import errno
import importlib.metadata as metadata
import json
import logging
import os
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import click
from pydantic import BaseModel

from .config import ConfigError, ConfigSource, NodeConfig
from .exitcodes import EXIT_INTERRUPTED
from .explain import UserError, key_file_error, listen_error, state_dir_error
from .flags import GroupedCommand, flag_options
from .identity import IdentityError
from .plugins import PluginHost, installed_entry_points
from .text import MAX_LINE, ShownFormatter, shown

if TYPE_CHECKING:
    from .identity import Identity
    from .liveview import View
    from .node import Node
    from .status import PluginStatus

# The node, its status socket and the key are imported by the commands that use them, so that
# `plugins` and `id` start fast.

EXIT_CONFIG = 2
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


COMMANDS_WITHOUT_PLUGINS = {"id", "peers", "keygen"}
COMMANDS_WITHOUT_FLAGS = {*COMMANDS_WITHOUT_PLUGINS, "plugins"}
"""Commands that take no node or plugin flag: their command line is built without the config
models (``plugins`` lists the plugins without building their models' flags)."""


class Prescan:
    """What must be known before the command line can be built (and before it is parsed)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.command: str | None = None
        self.config: Path | None = None
        self.enable: list[str] | None = None
        self.disable: list[str] = []
        self.verbosity = 0  # -vv (or --log-level debug) shows tracebacks
        args = list(argv)
        for i, arg in enumerate(args):
            name, _, value = arg.partition("=")
            if not value and i + 1 < len(args):
                value = args[i + 1]
            after_log_level = i > 0 and args[i - 1] == "--log-level"  # its value, not a command
            if self.command is None and not arg.startswith("-") and not after_log_level:
                self.command = arg
            if name == "--config":
                self.config = Path(value)
            elif name == "--plugins":
                self.enable = [v.strip() for v in value.split(",") if v.strip()]
            elif name == "--disable-plugin":
                self.disable.append(value)
            elif name == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
                self.verbosity += 1 if name == "--verbose" else len(arg) - 1
            elif name == "--log-level" and value.lower() == "debug":
                self.verbosity = 2


_SHORT_FLAGS = {"v": "--verbose", "q": "--quiet"}


def long_flags(argv: Sequence[str], values: Collection[str] = ()) -> list[str]:
    """``-v``, ``-vv``, ``-q`` (or ``-vq``) as ``--verbose``, twice, ``--quiet``: click tries each
    short option as a long one first and, for the miss, builds "did you mean" suggestions that it
    then drops (difflib: ≈ 0.15 MiB of the memory of every node started with ``-v``). What comes
    after ``--`` is left as it is, and so is the value of an option named in ``values`` (the
    options that take one: ``--namespace -v`` names the namespace "-v")."""
    found: list[str] = []
    value_next = False
    for i, arg in enumerate(argv):
        if value_next:
            found.append(arg)
            value_next = False
        elif arg == "--":
            return found + list(argv[i:])
        elif len(arg) > 1 and arg[0] == "-" and set(arg[1:]) <= _SHORT_FLAGS.keys():
            found += [_SHORT_FLAGS[letter] for letter in arg[1:]]
        else:
            found.append(arg)
            value_next = arg in values
    return found


def value_options(group: click.Group) -> set[str]:
    """Every name of an option of ``group`` or of its commands that takes a value."""
    commands = [group, *group.commands.values()]
    return {
        name
        for command in commands
        for param in command.params
        if isinstance(param, click.Option) and not param.is_flag and not param.count
        for name in param.opts
    }


class Setup:
    """The config source and loaded plugins, or the error that prevented them."""

    def __init__(self, pre: Prescan) -> None:
        self.pre = pre
        self.error: ConfigError | None = None
        self.host = PluginHost()
        self.source: ConfigSource | None = None
        try:
            self.source = ConfigSource.load(pre.config, enable=pre.enable, disable=pre.disable)
            if pre.command not in COMMANDS_WITHOUT_PLUGINS:  # they need no plugin: start fast
                installed = sorted(installed_entry_points())
                self.host.load_installed(self.source.plugin_selection(installed))
        except ConfigError as exc:
            self.error = exc

    def models(self) -> list[tuple[str, type[BaseModel]]]:
        models: list[tuple[str, type[BaseModel]]] = [("node", NodeConfig)]
        for name in self.host.loaded():
            try:
                models.append((name, self.host.config_model(name)))
            except Exception as exc:  # noqa: BLE001 - a broken plugin loses its flags, not the CLI
                self.host.infos[name].error = f"config_model failed: {exc}"
        return models

    def with_flags(self, flags: dict[str, Any]) -> ConfigSource:
        if self.error is not None or self.source is None:
            raise self.error or ConfigError("configuration not loaded")
        self.source.flags = {k: v for k, v in flags.items() if v is not None}
        return self.source


def _flag_options(setup: Setup) -> list[click.Option]:
    if setup.pre.command in COMMANDS_WITHOUT_FLAGS:
        return []
    return flag_options(setup.models())


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--config",
        type=click.Path(path_type=Path),
        default=None,
        help="Config file (default: $EXO_DISCOVERY_CONFIG, ./exo-discovery.toml)",
    )(func)
    func = click.option(
        "--plugins",
        default=None,
        help="Only these plugins, comma-separated (overrides $EXO_DISCOVERY_PLUGINS)",
    )(func)
    func = click.option(
        "--disable-plugin", multiple=True, help="Do not load (or import) this plugin; repeatable"
    )(func)
    return func


def _flags_by_name(setup: Setup, params: dict[str, Any]) -> dict[str, Any]:
    flags = {}
    for option in _flag_options(setup):
        assert option.name is not None
        flags[option.opts[0].split("/")[0]] = params.get(option.name)
    return flags


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_CONFIG)


def _log_option(ctx: click.Context, param: click.Parameter, value: int | str | None) -> None:
    """-v, -q and --log-level, before or after the command: all count, the last level wins."""
    root = ctx.find_root().meta.setdefault("exo_logging", {"verbose": 0, "quiet": 0, "level": 0})
    if param.name in ("verbose", "quiet") and isinstance(value, int):
        root[param.name] += value
    elif param.name == "log_level" and isinstance(value, str):
        root["level"] = LOG_LEVELS[value.lower()]
    level = root["level"] or (
        [logging.WARNING, logging.INFO, logging.DEBUG][min(root["verbose"], 2)]
        if root["verbose"] or not root["quiet"]
        else logging.ERROR
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ShownFormatter(LOG_FORMAT))
    logging.basicConfig(handlers=[handler])  # once: a root with a handler is left as it is
    logging.getLogger().setLevel(level)


def _log_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for decorator in (
        click.option(
            "--log-level",
            type=click.Choice(list(LOG_LEVELS), case_sensitive=False),
            default=None,
            expose_value=False,
            callback=_log_option,
            help="Log level (overrides -v and -q)",
        ),
        click.option(
            "-q",
            "--quiet",
            count=True,
            expose_value=False,
            callback=_log_option,
            help="Only errors in the log",
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            expose_value=False,
            callback=_log_option,
            help="More log output (-vv: debug, and tracebacks)",
        ),
    ):
        func = decorator(func)
    return func


def _timeout_option(default: float, help_text: str) -> Callable[[Any], Any]:
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        show_default=True,
        help=help_text,
    )


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"exo-discovery {metadata.version('exo-discovery-core')} (exo-discovery-core)")
    plugins = sorted(installed_entry_points().items())
    if plugins:
        click.echo("plugins:")
        rows = [
            (name, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?")
            for name, ep in plugins
        ]
        click.echo(_columns(rows, indent="  "))
    ctx.exit()


def _columns(rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Rows as aligned columns (the last one unpadded)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        indent + "  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def _identity(state_dir: Path) -> Identity:
    """The node's key, or a one-line error naming the state dir or the key file at fault."""
    from .identity import Identity

    with _key_errors(state_dir):
        return Identity.load_or_create(state_dir)


@contextmanager
def _key_errors(state_dir: Path) -> Iterator[None]:
    """The state dir made and checked first, so that an unwritable one is named as such."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not os.access(state_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(state_dir))
        yield
    except OSError as exc:
        raise state_dir_error(state_dir, exc) from exc
    except IdentityError as exc:
        raise key_file_error(exc) from exc


def build(setup: Setup) -> click.Group:
    flag_options = _flag_options(setup)

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.option(
        "--version",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_print_version,
        help="The version of the core and of each installed plugin",
    )
    @_log_options
    def cli() -> None:
        """Find the other nodes of your cluster: mDNS on the LAN, Headscale across networks,
        bootstrap addresses where neither works."""

    @cli.command(cls=GroupedCommand)
    @_common
    @click.option("--json", "as_json", is_flag=True, help="One JSON event per line on stdout")
    @click.option(
        "--wait-for",
        type=click.IntRange(min=1),
        default=None,
        metavar="N",
        help="Exit 0 with a ready line once N peers are connected (1 at --timeout)",
    )
    @_timeout_option(60.0, "Seconds --wait-for waits")
    @_log_options
    def run(as_json: bool, wait_for: int | None, timeout: float, **params: Any) -> None:
        """Start the node and show its peers as they come and go."""
        source = setup.with_flags(_flags_by_name(setup, params))
        config = source.node_config()
        _warn(source)
        identity = _identity(config.state_dir)
        from . import runner
        from .node import Node

        node = Node(config, source=source, host=setup.host, identity=identity)
        view = _view(node, as_json)
        goal = None
        if wait_for is not None:
            goal = runner.Goal(wait_for, timeout, out=sys.stderr if as_json else sys.stdout)
        with _listen_errors(config):
            sys.exit(anyio.run(runner.run, node, view, goal))

    for option in flag_options:
        run.params.append(option)

    @cli.command()
    @_common
    @click.option("--json", "as_json", is_flag=True, help="JSON output")
    @_log_options
    def plugins(as_json: bool, **_: Any) -> None:
        """List installed plugins: distribution, version, enabled, load errors."""
        if setup.error:
            _fail(setup.error)
        if setup.source is not None:
            _warn(setup.source)
        infos = setup.host.infos_sorted()
        running = _running_plugins(setup)  # what a node running with this state dir says
        if as_json:
            listed = []
            for info in infos:
                now = running.get(info.name)
                live = {"state": now.state, "health": now.health} if now else {}
                listed.append({**info.as_dict(), **live})
            click.echo(json.dumps(listed, indent=2))
            return
        if not infos:
            click.echo(
                "no plugins installed (pip install exo-discovery-mdns, -bootstrap, -headscale)"
            )
            return
        rows = [("NAME", "DISTRIBUTION", "VERSION", "STATE")]
        for info in infos:
            state = "enabled" if info.enabled else f"disabled ({info.status})"
            if info.error:
                state = f"ERROR: {info.error}"
            now = running.get(info.name)
            if now is not None and now.state is not None:
                state = f"{now.state}: {shown(now.health)}" if now.health else now.state
            rows.append((info.name, info.distribution, info.version, state))
        click.echo(_columns(rows))
        if running:
            click.echo("(STATE from the node running with this state dir)")

    @cli.command()
    @click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="State dir of the running node",
    )
    @click.option("--json", "as_json", is_flag=True, help="JSON output")
    @click.option(
        "--state",
        "states",
        type=click.Choice(["connected", "known", "incompatible"]),
        multiple=True,
        help="Only peers in this state (repeatable)",
    )
    @_log_options
    def peers(state_dir: Path | None, as_json: bool, states: tuple[str, ...]) -> None:
        """Show the members of the node running with this state dir: short id, host, state,
        route, round-trip time, last seen, sources, and why a known peer is not connected."""
        state_dir = state_dir or _state_dir_default(setup)
        try:
            from .status import query

            data = anyio.run(query, state_dir)
        except ConnectionError as exc:
            raise UserError(
                str(exc), "start one (exo-discovery run), or give its --state-dir"
            ) from exc
        if states:
            data = data.model_copy(update={"peers": [r for r in data.peers if r.state in states]})
        if as_json:
            click.echo(data.model_dump_json(indent=2))
            return
        from . import members

        width = shutil.get_terminal_size().columns
        me = data.peer_id if width >= 90 else f"{data.peer_id[:12]}… (exo-discovery id: all of it)"
        click.echo(f"node {me}  port {data.port}  namespace {data.namespace}")
        for line in members.render(data.peers, width):
            click.echo(line)
        if data.duplicate_identity:
            click.echo(f"WARNING: {shown(data.duplicate_identity, MAX_LINE)}")
        for row in data.peers:
            if row.duplicate_identity:
                warning = shown(row.duplicate_identity, MAX_LINE)  # it quotes the peer's records
                click.echo(f"WARNING: peer {row.peer_id}: {warning}")

    @cli.command()
    @_common
    @_timeout_option(5.0, "Seconds to look for peers")
    @click.option("--json", "as_json", is_flag=True, help="The peers as a JSON list")
    @_log_options
    def discover(timeout: float, as_json: bool, **params: Any) -> None:
        """Look for peers for --timeout seconds, print what was found and exit (for scripts).

        It runs as a node of its own with a new peer id, on a free port unless one is set, so
        it can run beside the node of this machine."""
        source = setup.with_flags(_flags_by_name(setup, params))
        config = source.node_config()
        _warn(source)
        from . import members, runner
        from .identity import Identity
        from .node import Node

        with tempfile.TemporaryDirectory(prefix="exo-discovery-discover-") as scratch:
            port = config.port if _port_was_set(source) else 0
            config = config.model_copy(update={"state_dir": Path(scratch), "port": port})
            node = Node(config, source=source, host=setup.host, identity=Identity.generate())
            with _listen_errors(config):
                found = anyio.run(runner.discover, node, timeout)
        if as_json:
            click.echo(json.dumps([row.model_dump() for row in found.peers], indent=2))
            return
        count = len(found.peers)
        click.echo(f"{count} peer{'' if count == 1 else 's'} found in {timeout:g} s")
        for line in members.render(found.peers, shutil.get_terminal_size().columns):
            click.echo(line)

    for option in flag_options:
        discover.params.append(option)

    @cli.command(cls=GroupedCommand)
    @_common
    @_log_options
    def doctor(**params: Any) -> None:
        """Check the configuration and whether each enabled plugin can work here."""
        try:
            source = setup.with_flags(_flags_by_name(setup, params))
            for warning in source.warnings:
                click.echo(f"! {warning}")
            from .doctor import run_doctor

            ok = anyio.run(run_doctor, setup.host, source)
        except ConfigError as exc:
            click.echo(f"✗ configuration: {exc}")
            sys.exit(1)
        running = _running_plugins(setup)
        if running:  # what the plugins see in practice (other clusters on the LAN, failures)
            click.echo("the node running with this state dir says:")
            for plugin in running.values():
                if plugin.state is not None:
                    health = shown(plugin.health or "", MAX_LINE)
                    click.echo(f"  {plugin.name}: {plugin.state}: {health}".rstrip(": "))
        sys.exit(0 if ok else 1)

    for option in flag_options:
        doctor.params.append(option)

    @cli.command(name="id")
    @click.option(
        "--state-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Where the node keeps its key",
    )
    @click.option(
        "--regenerate",
        is_flag=True,
        help="Make a new key (a new peer id), after saying what the old one was",
    )
    @_log_options
    def id_(state_dir: Path | None, regenerate: bool) -> None:
        """Print this node's peer id (creating its key on first use)."""
        from .identity import Identity

        state_dir = state_dir or _state_dir_default(setup)
        if not regenerate:
            click.echo(_identity(state_dir).peer_id)
            return
        with _key_errors(state_dir):
            identity, old = Identity.regenerate(state_dir)
        if old is not None:
            click.echo(f"old key: {old}; kept as {state_dir / 'identity.key.old'}", err=True)
        click.echo(identity.peer_id)

    @cli.command()
    @click.argument("path", type=click.Path(path_type=Path))
    @click.option("--force", is_flag=True, help="Replace an existing file (the old key is lost)")
    def keygen(path: Path, force: bool) -> None:
        """Write a new random cluster key to PATH (mode 0600); the key itself is never printed.

        Give every node of the cluster the same file (`cluster_key_file`, `--cluster-key-file`
        or EXO_DISCOVERY_CLUSTER_KEY_FILE); a node without it cannot join or learn anything."""
        from .clusterkey import write_key_file

        try:
            fingerprint = write_key_file(path, force=force)
        except FileExistsError:
            _fail(ValueError(f"{path} exists; pass --force to replace it (nodes using it lose it)"))
            return
        except OSError as exc:
            _fail(ValueError(f"cannot write {path}: {exc.strerror or exc}"))
            return
        click.echo(f"wrote a new cluster key to {path} (fingerprint {fingerprint})")

    return cli


def _warn(source: ConfigSource) -> None:
    for warning in source.warnings:
        click.echo(f"warning: {warning}", err=True)


def _running_plugins(setup: Setup) -> dict[str, PluginStatus]:
    """The plugins of the node running with this state dir, by name; none when none runs."""
    from .files import socket_path

    try:
        state_dir = setup.with_flags({}).node_config().state_dir
        if not socket_path(state_dir).exists():
            return {}
        from .status import query

        status = anyio.run(query, state_dir, 1.0)
    except (ConfigError, ConnectionError, OSError, TimeoutError, ValueError):
        return {}  # no node, or not one we can read: the installed plugins are still listed
    return {plugin.name: plugin for plugin in status.plugins}


def _state_dir_default(setup: Setup) -> Path:
    try:
        return setup.with_flags({}).node_config().state_dir
    except ConfigError as exc:
        _fail(exc)
        raise


def _view(node: Node, as_json: bool) -> View:
    """JSON lines, a line per event, or (on a terminal) the live view with its log area."""
    from .liveview import JsonView, LineView, LiveView, LogArea

    if as_json:
        return JsonView()
    if not sys.stdout.isatty():
        return LineView()
    view = LiveView(node.status)
    if sys.stderr.isatty():  # the same terminal: log lines go into the frame, not through it
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                root.removeHandler(handler)
        area = LogArea(view)
        area.setFormatter(ShownFormatter(LOG_FORMAT, "%H:%M:%S"))
        root.addHandler(area)
    return view


@contextmanager
def _listen_errors(config: NodeConfig) -> Iterator[None]:
    """A node that cannot start where it was told to: the state dir or the port, named."""
    try:
        yield
    except OSError as exc:
        if exc.filename and Path(exc.filename).is_relative_to(config.state_dir):
            raise state_dir_error(config.state_dir, exc) from exc
        raise listen_error(config, exc) or exc from exc


def _port_was_set(source: ConfigSource) -> bool:
    """Whether a flag, the env or the file chose the port (else ``discover`` takes a free one)."""
    node_table = source.file_data.get("node", {})
    return (
        source.flags.get("--port") is not None
        or bool(source.env.get("EXO_DISCOVERY_PORT"))
        or (isinstance(node_table, dict) and "port" in node_table)
    )


def main(argv: Sequence[str] | None = None) -> None:
    """The ``exo-discovery`` command: every failure a user can cause ends in one line and a
    non-zero exit code; tracebacks only with -vv."""
    args = list(sys.argv[1:] if argv is None else argv)
    pre = Prescan(args)
    setup: Setup | None = None
    try:
        setup = Setup(pre)
        cli = build(setup)
        code = cli.main(
            args=long_flags(args, value_options(cli)),
            prog_name="exo-discovery",
            standalone_mode=False,
        )
    except BaseException as exc:  # noqa: BLE001 - sorted below; nothing escapes as a traceback
        sys.exit(_exit_code(exc, pre, setup))
    sys.exit(code if isinstance(code, int) else 0)


def _exit_code(exc: BaseException, pre: Prescan, setup: Setup | None) -> int:
    """Say what went wrong (a line, a fix) and return the exit code."""
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if _interrupted(exc):
        return EXIT_INTERRUPTED
    if pre.verbosity >= 2:
        traceback.print_exception(exc)
    if isinstance(exc, click.ClickException):
        exc.show()
        if isinstance(exc, click.NoSuchOption) and not exc.possibilities and setup is not None:
            unloaded = sorted(i.name for i in setup.host.infos_sorted() if not i.loaded)
            if unloaded:  # the flag may be one of a plugin that is not loaded
                click.echo(f"(flags of plugins not loaded here: {', '.join(unloaded)})", err=True)
        return exc.exit_code
    if isinstance(exc, ConfigError):
        click.echo(f"error: {exc}", err=True)
        return EXIT_CONFIG
    if isinstance(exc, UserError):
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    click.echo(
        f"error: unexpected {type(exc).__name__}: {exc} (a bug: run with -vv and report the "
        "traceback)",
        err=True,
    )
    return 1


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C before the node took over SIGINT (click turns it into Abort), perhaps in a group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup((KeyboardInterrupt, click.Abort)) is not None
    return isinstance(exc, KeyboardInterrupt | click.Abort)
