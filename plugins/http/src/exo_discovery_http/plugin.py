"""The http plugin: every target of the URL's http_sd answer is a peer.

Each round (the core's ``poll``, at ``refresh_interval`` or the interval the server asks for)
GETs the URL and yields the candidates of its target groups when they changed. A failing round
(down, 500, bad JSON, too big, too slow) yields nothing, so the node keeps the last good list.
A bad target skips only itself, logged once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel

from exo_discovery_core import CheckResult, DiscoveryContext, PeerCandidate, hookimpl, poll
from exo_discovery_core.targetgroups import group_candidates

from .config import HOW_TO_CONFIGURE, HttpConfig
from .source import HttpSource, HttpSourceError

PeerSets = AsyncIterator[Iterable[PeerCandidate]]


class HttpPlugin:
    """The plugin as an object, so tests can give it a transport; the entry point is the module."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport

    @hookimpl
    def config_model(self) -> type[BaseModel]:
        return HttpConfig

    @hookimpl
    def discover_peers(self, context: DiscoveryContext[Any]) -> PeerSets | None:
        config = _config(context)
        if config.url is None:
            context.log.info("http discovery idle: no URL; to use it, %s", HOW_TO_CONFIGURE)
            return None
        return self._run(context, config)

    async def _run(self, context: DiscoveryContext[Any], config: HttpConfig) -> PeerSets:
        async with HttpSource(config, transport=self.transport) as source:
            round_ = _Round(context, source)
            async for peers in poll(
                round_.fetch,
                interval=lambda: source.interval,
                log=context.log,
                what=f"http_sd {config.shown_url}",
                timeout=config.timeout + 5.0,
                report_health=context.report_health,
            ):
                yield peers

    @hookimpl
    async def doctor(self, context: DiscoveryContext[Any]) -> list[CheckResult]:
        config = _config(context)
        name = "http: target list"
        if config.url is None:
            detail = f"no url, so the plugin stays idle (to use it, {HOW_TO_CONFIGURE})"
            return [CheckResult(name=name, ok=True, detail=detail)]
        async with HttpSource(config, transport=self.transport) as source:
            try:
                groups = await source.fetch()
            except HttpSourceError as exc:
                return [CheckResult(name=name, ok=False, detail=str(exc), fix=exc.fix)]
        candidates, problems = group_candidates(
            groups, context.node.port, source=config.shown_url
        )
        checks = [
            CheckResult(
                name=name,
                ok=True,
                detail=f"{config.shown_url}: {len(groups)} group(s), {len(candidates)} peer(s)",
            )
        ]
        checks += [
            CheckResult(
                name="http: target", ok=False, detail=p, fix="write each target as HOST:PORT"
            )
            for p in problems
        ]
        return checks


@dataclass
class _Round:
    """What one run remembers between rounds: the problems already logged."""

    context: DiscoveryContext[Any]
    source: HttpSource
    logged: set[str] = field(default_factory=set)

    async def fetch(self) -> frozenset[PeerCandidate]:
        groups = await self.source.fetch()
        node = self.context.node
        candidates, problems = group_candidates(groups, node.port, source="http_sd answer")
        for problem in problems:
            if problem not in self.logged:
                self.context.log.warning("%s; skipped", problem)
        self.logged = set(problems)
        return frozenset(c for c in candidates if c.peer_id != node.peer_id)


def _config(context: DiscoveryContext[Any]) -> HttpConfig:
    config = context.config
    if not isinstance(config, HttpConfig):
        raise TypeError(f"http: expected HttpConfig, got {type(config).__name__}")
    return config


_DEFAULT = HttpPlugin()


@hookimpl
def config_model() -> type[BaseModel]:
    """The ``[plugins.http]`` table: url, bearer_token, refresh_interval, limits."""
    return HttpConfig


@hookimpl
def discover_peers(context: DiscoveryContext[Any]) -> PeerSets | None:
    """The URL's targets, every round; None when no URL is configured."""
    return _DEFAULT.discover_peers(context)


@hookimpl
async def doctor(context: DiscoveryContext[Any]) -> list[CheckResult]:
    """One request to the URL: reachable, a valid target list, how many peers."""
    return await _DEFAULT.doctor(context)
