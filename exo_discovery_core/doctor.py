"""``exo-discovery doctor``: the configuration, then each enabled plugin's own checks."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import anyio
import click

from .config import ConfigSource, NodeConfig
from .identity import KEY_FILE_NAME, Identity, IdentityError, PeerId
from .models import Address, CheckResult, DiscoveryContext, NodeInfo
from .plugins import PluginHost
from .text import MAX_LINE, logger, shown

DOCTOR_TIMEOUT = 20.0


def _print(check: CheckResult) -> None:
    mark = click.style("✓", fg="green") if check.ok else click.style("✗", fg="red")
    # A plugin's check may quote its server or its network (names, errors): shown, not obeyed.
    detail = f": {shown(check.detail, MAX_LINE)}" if check.detail else ""
    click.echo(f"{mark} {shown(check.name)}{detail}")
    if not check.ok and check.fix:
        click.echo(f"    fix: {shown(check.fix, MAX_LINE)}")


async def run_doctor(host: PluginHost, source: ConfigSource) -> bool:
    """Print every check; True when all passed. Config errors raise ConfigError."""
    node_config = source.node_config()
    configs = {  # every table validated before anything is reported
        info.name: source.plugin_config(info.name, host.config_model(info.name))
        for info in host.infos_sorted()
        if info.loaded
    }
    _print(
        CheckResult(
            name="configuration", ok=True, detail=f"{source.file or 'no config file (defaults)'}"
        )
    )
    peer_id, key_check = _identity_check(node_config.state_dir / KEY_FILE_NAME)
    _print(key_check)
    _print(_cluster_key_check(node_config))
    running = await _running_node_check(node_config.state_dir)
    if running is not None:
        _print(running)
    port = node_config.port  # 0 (any free port): no address to tell the plugins yet
    listen = (Address(host="127.0.0.1", port=port),) if port else ()
    node = NodeInfo(
        peer_id,
        node_config.namespace,
        port,
        listen,
        cluster_key_fingerprints=node_config.keyring().fingerprints,
    )
    all_ok = key_check.ok and (running is None or running.ok)
    for info in host.infos_sorted():
        if not info.enabled:
            click.echo(f"- plugin {info.name}: {info.status}")
            continue
        if info.error:
            _print(
                CheckResult(
                    name=f"plugin {info.name}",
                    ok=False,
                    detail=info.error,
                    fix=f"reinstall {info.distribution} or disable it "
                    f"(--disable-plugin {info.name})",
                )
            )
            all_ok = False
            continue
        config = configs[info.name]
        context = DiscoveryContext(
            plugin_name=info.name,
            config=config,
            node=node,
            state_dir=Path(node_config.state_dir) / "plugins" / info.name,
            log=logger(f"exo_discovery.plugin.{info.name}"),
        )
        checks = await _checks(host, info.name, context)
        click.echo(f"plugin {info.name}:")
        for check in checks:
            _print(check)
            all_ok = all_ok and check.ok
    return all_ok


def _identity_check(key_file: Path) -> tuple[PeerId, CheckResult]:
    """The node's key: its peer id, or why it cannot be used (a stand-in id for the plugins)."""
    if not key_file.exists():
        detail = f"no key yet ({key_file} is made on first start)"
        return Identity.generate().peer_id, CheckResult(name="identity", ok=True, detail=detail)
    try:
        peer_id = Identity.load(key_file).peer_id
    except IdentityError as exc:
        problem = f"key file {key_file} {exc.problem}"
        fix = str(exc).removeprefix(problem + "; ")
        check = CheckResult(name="identity", ok=False, detail=problem, fix=fix)
        return Identity.generate().peer_id, check
    return peer_id, CheckResult(name="identity", ok=True, detail=f"peer id {peer_id}")


def _cluster_key_check(config: NodeConfig) -> CheckResult:
    """Whether a cluster key is set, named by its fingerprint (the key itself never shows)."""
    keyring = config.keyring()
    if not keyring:
        return CheckResult(
            name="cluster key",
            ok=True,
            detail="none: any node that reaches this one can join "
            "(set one with `exo-discovery keygen` and cluster_key_file)",
        )
    source = f"file {config.cluster_key_file}" if config.cluster_key_file else "cluster_key"
    primary, *others = keyring.fingerprints
    detail = f"set ({source}), fingerprint {primary}"
    if others:
        detail += f"; also accepted: {', '.join(others)}"
    if config.trusted_peers:
        detail += f"; {len(config.trusted_peers)} trusted peers"
    return CheckResult(name="cluster key", ok=True, detail=detail)


async def _running_node_check(state_dir: Path) -> CheckResult | None:
    """What the node running with this state dir knows of itself (None if none runs)."""
    from .status import query

    try:
        data = await query(state_dir, timeout=3.0)
    except (ConnectionError, OSError, TimeoutError, ValueError):
        return None
    if data.duplicate_identity:
        fix = f"exo-discovery id --regenerate --state-dir {state_dir} on one of them"
        return CheckResult(
            name="duplicate identity", ok=False, detail=data.duplicate_identity, fix=fix
        )
    return CheckResult(name="running node", ok=True, detail=f"{data.peer_id} on port {data.port}")


async def _checks(host: PluginHost, name: str, context: DiscoveryContext[Any]) -> list[CheckResult]:
    try:
        with anyio.fail_after(DOCTOR_TIMEOUT):
            result = host.call(name, "doctor", context=context)
            if inspect.isawaitable(result):
                result = await result
    except Exception as exc:  # noqa: BLE001 - a broken check is itself a finding
        return [
            CheckResult(
                name=f"{name} doctor",
                ok=False,
                detail=f"{type(exc).__name__}: {exc}",
                fix="report this to the plugin's authors",
            )
        ]
    if result is None:
        return [CheckResult(name=f"{name}", ok=True, detail="no checks of its own")]
    return list(result)
