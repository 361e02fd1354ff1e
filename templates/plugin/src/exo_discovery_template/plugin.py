"""The hooks: the node calls these. Import only the public API of ``exo_discovery_core``."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from pydantic import BaseModel, ConfigDict

from exo_discovery_core import (
    CheckResult,
    DiscoveryContext,
    PeerCandidate,
    PeerSets,
    SourceError,
    hookimpl,
    option,
    poll,
)


class TemplateConfig(BaseModel):
    """The ``[plugins.template]`` table; each field can also come from its env var and flag."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = option(
        None,
        help="JSON file with a list of host:port",
        flag="--template-path",
        env="EXO_TEMPLATE_PATH",
        needed=True,  # unset: the plugin is idle, and the node says how to set this
    )
    interval: float = option(5.0, help="Seconds between reads", flag="--template-interval", gt=0)


@hookimpl
def config_model() -> type[BaseModel]:
    return TemplateConfig


def parse(text: str, origin: str) -> frozenset[PeerCandidate]:
    """The candidates in ``text``; a SourceError that quotes the bad entry otherwise."""
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{origin}: not JSON: {exc}") from None
    if not isinstance(entries, list):
        raise SourceError(f"{origin}: expected a JSON list of host:port")
    candidates = set()
    for entry in entries:
        host, _, port = str(entry).rpartition(":")
        if not host or not (port.isascii() and port.isdigit()):
            raise SourceError(f"{origin}: {entry!r} is not host:port")
        try:
            candidates.add(PeerCandidate.at(host.strip("[]"), int(port)))
        except ValueError as exc:
            raise SourceError(f"{origin}: {entry!r}: {exc}") from None
    return frozenset(candidates)


@hookimpl
def discover_peers(context: DiscoveryContext[TemplateConfig]) -> PeerSets | None:
    """None (idle: the node logs how to configure it) without a path, else the file's peers."""
    if context.config.path is None:
        return None
    return watch(context, context.config.path)


async def watch(context: DiscoveryContext[TemplateConfig], path: Path) -> PeerSets:
    """Yield the file's peers whenever they change; the core's ``poll`` keeps the last good set
    while the file is missing or broken, backs off and logs each failure once."""

    async def read() -> frozenset[PeerCandidate]:
        try:
            text = await anyio.Path(path).read_text()
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None
        return parse(text, str(path))

    yield frozenset()  # nothing known yet: say so at once
    interval = context.config.interval
    async for peers in poll(read, interval=interval, log=context.log, what=f"peer file {path}"):
        yield peers


@hookimpl
def on_connection(event: object, context: DiscoveryContext[TemplateConfig]) -> None:
    context.log.debug("connection event: %s", event)


@hookimpl
def doctor(context: DiscoveryContext[TemplateConfig]) -> list[CheckResult]:
    path = context.config.path
    if path is None:
        return [
            CheckResult(
                name="peer file",
                ok=True,
                detail=f"not configured: plugin idle (to use it, {context.how_to_set()})",
            )
        ]
    try:
        peers = parse(path.read_text(), str(path))
    except (OSError, SourceError) as exc:
        return [
            CheckResult(
                name="peer file",
                ok=False,
                detail=str(exc),
                fix=f'create {path} with a JSON list such as ["10.0.0.2:52417"]',
            )
        ]
    return [CheckResult(name="peer file", ok=True, detail=f"{len(peers)} peers in {path}")]
