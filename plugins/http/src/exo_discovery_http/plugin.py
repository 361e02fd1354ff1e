"""The http plugin: every target of the URL's http_sd answer is a peer.

Each round (the core's ``poll``, at ``refresh_interval`` or the interval the server asks for)
GETs the URL and yields the candidates of its target groups when they changed. A failing round
(down, 500, bad JSON, too big, too slow) yields nothing, so the node keeps the last good list.
A bad target skips only itself, logged once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exo_discovery_core import (
    CheckResult,
    DiscoveryContext,
    LogOnce,
    PeerCandidate,
    PeerSets,
    hookimpl,
    poll,
)
from exo_discovery_core.targetgroups import group_candidates

from .config import HttpConfig
from .source import HttpSource, HttpSourceError

if TYPE_CHECKING:
    import httpx
    from pydantic import BaseModel


class HttpPlugin:
    """The plugin as an object, so tests can give it a transport; the entry point names
    :data:`plugin`, an instance with the default transport."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.transport = transport

    @hookimpl
    def config_model(self) -> type[BaseModel]:
        """The ``[plugins.http]`` table: url, bearer_token, refresh_interval, limits."""
        return HttpConfig

    @hookimpl
    def discover_peers(self, context: DiscoveryContext[HttpConfig]) -> PeerSets | None:
        """The URL's targets, every round; None when no URL is configured."""
        config = context.config
        if config.url is None:
            return None
        return self._run(context, config)

    async def _run(self, context: DiscoveryContext[HttpConfig], config: HttpConfig) -> PeerSets:
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
    async def doctor(self, context: DiscoveryContext[HttpConfig]) -> list[CheckResult]:
        """One request to the URL: reachable, a valid target list, how many peers."""
        config = context.config
        name = "http: target list"
        if config.url is None:
            detail = f"no url, so the plugin stays idle (to use it, {context.how_to_set()})"
            return [CheckResult(name=name, ok=True, detail=detail)]
        async with HttpSource(config, transport=self.transport) as source:
            try:
                groups = await source.fetch()
            except HttpSourceError as exc:
                return [CheckResult(name=name, ok=False, detail=str(exc), fix=exc.fix)]
        candidates, problems = group_candidates(groups, context.node.port, source=config.shown_url)
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

    context: DiscoveryContext[HttpConfig]
    source: HttpSource
    said: LogOnce = field(init=False)

    def __post_init__(self) -> None:
        self.said = LogOnce(self.context.log)

    async def fetch(self) -> frozenset[PeerCandidate]:
        groups = await self.source.fetch()
        node = self.context.node
        candidates, problems = group_candidates(groups, node.port, source="http_sd answer")
        for gone in set(self.said.topics()) - set(problems):  # fixed: news again if it returns
            self.said.clear(gone)
        for problem in problems:
            self.said.warning(problem, "%s; skipped", problem)
        return frozenset(c for c in candidates if c.peer_id != node.peer_id)


plugin = HttpPlugin()
"""What the entry point names: the plugin with the default transport."""
