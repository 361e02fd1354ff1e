"""The Headscale plugin: every online node carrying the membership tag is a peer.

Each round (``poll_interval``, through the core's ``poll``) lists the nodes, keeps the online ones
with the tag (or, with ``all_nodes_of_user``, every node of ``user``), drops this node itself (found
by its Tailscale IPs) and yields one candidate per node with all of its IPs at the node's port.
With ``self_register`` it also adds the tag to its own node, and again whenever it goes missing.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from exo_discovery_core import (
    Address,
    CheckResult,
    DiscoveryContext,
    LogOnce,
    NodeInfo,
    PeerCandidate,
    PeerId,
    PeerSets,
    hookimpl,
    parse_ips,
    poll,
)

from .config import AUTH_RETRY_AFTER, HeadscaleConfig

if TYPE_CHECKING:  # the API client and its models are imported when the plugin runs
    import httpx
    from pydantic import BaseModel

    from .api import HeadscaleClient, WireNode

LEGACY_PEER_ID_TAG = "tag:exo_peer_id="
LEGACY_PORT_TAG = "tag:exo_port="
REGISTER_RETRY = 60.0
"""After a failed self-registration, wait this long before trying again."""


class HeadscalePlugin:
    """The plugin as an object, so tests can swap the transport and shorten the retries.

    The entry point names :data:`plugin`, an instance with the defaults.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        auth_retry_after: float = AUTH_RETRY_AFTER,
        register_retry: float = REGISTER_RETRY,
    ) -> None:
        self.transport = transport
        self.auth_retry_after = auth_retry_after
        self.register_retry = register_retry

    def client(self, config: HeadscaleConfig) -> HeadscaleClient:
        from .api import HeadscaleClient

        assert config.api_url is not None
        return HeadscaleClient(
            config.api_url,
            config.api_key,
            timeout=config.timeout,
            max_bytes=config.max_answer_bytes,
            auth_retry_after=self.auth_retry_after,
            transport=self.transport,
        )

    @hookimpl
    def config_model(self) -> type[BaseModel]:
        """The ``[plugins.headscale]`` table (api_url, api_key, tag, poll_interval, ...)."""
        return HeadscaleConfig

    @hookimpl
    def discover_peers(self, context: DiscoveryContext[HeadscaleConfig]) -> PeerSets | None:
        """The online tagged nodes of the tailnet, polled; None (idle) without api_url."""
        config = context.config
        if config.api_url is None:
            return None
        return self._run(context, config)

    async def _run(
        self, context: DiscoveryContext[HeadscaleConfig], config: HeadscaleConfig
    ) -> PeerSets:
        log = context.log
        if config.plain_http_remote:
            log.warning(
                "api_url %s is plain HTTP to a remote host: the API key crosses the network "
                "unencrypted; use https://",
                config.api_url,
            )
        if config.api_key is None:
            # the API answers nothing without a key: failing, with the reason, until it is set
            message = (
                f"no API key for {config.api_url}: create one with `headscale apikeys create`, "
                f"then {context.how_to_set('api_key')}"
            )
            log.error("Headscale discovery cannot start: %s", message)
            context.report_health(False, message)
            await anyio.sleep_forever()
        async with self.client(config) as client:
            round_ = _Round(self, context, config, client, Selector(config, context.node))
            async for peers in poll(
                round_.fetch,
                interval=config.poll_interval,
                log=log,
                what=f"Headscale {config.api_url}",
                timeout=2 * config.timeout + 5.0,
                report_health=context.report_health,
            ):
                yield peers

    @hookimpl
    async def doctor(self, context: DiscoveryContext[HeadscaleConfig]) -> list[CheckResult]:
        """URL, server and API version, key, and how many nodes are visible, tagged, online."""
        config = context.config
        if config.api_url is None:
            return [
                CheckResult(
                    name="headscale: configured",
                    ok=True,
                    detail=f"no api_url, so the plugin stays idle (to use it, "
                    f"{context.how_to_set()})",
                )
            ]
        return await _doctor(self, context, config)


def own_ips(context: DiscoveryContext[HeadscaleConfig]) -> frozenset[str]:
    """This node's IPs as text (Headscale sends canonical forms): the host's, and self_addresses."""
    return frozenset(map(str, context.node.own_ips() | set(context.config.self_addresses)))


# -- which nodes are peers -----------------------------------------------------------------


@dataclass
class Selector:
    """Turns a node list into the candidate set, reusing the candidates of unchanged nodes.

    Polling a big tailnet mostly sees the same nodes again: a node whose id, name, IPs and tags
    are unchanged keeps its candidate object, and an unchanged round returns the previous set
    itself, so the poller's comparison is by identity. Only new or changed nodes pay for IP
    parsing and model building.
    """

    config: HeadscaleConfig
    node: NodeInfo
    log: logging.Logger | None = None
    _cache: dict[tuple[Any, ...], PeerCandidate | None] = field(default_factory=dict)
    _last: list[PeerCandidate] = field(default_factory=list)
    _last_set: frozenset[PeerCandidate] = frozenset()
    _said: LogOnce | None = None

    def is_member(self, node: WireNode) -> bool:
        config = self.config
        if config.user and (node.user is None or node.user.name != config.user):
            return False
        return config.all_nodes_of_user or config.tag in node.tag_set

    def select(self, nodes: list[WireNode], own_ips: frozenset[str]) -> frozenset[PeerCandidate]:
        tag, user, all_of_user = self.config.tag, self.config.user, self.config.all_nodes_of_user
        cache: dict[tuple[Any, ...], PeerCandidate | None] = {}
        chosen: list[PeerCandidate] = []
        old = self._cache
        for node in nodes:
            if not node.online:
                continue
            tags = node.tag_set
            if user and (node.user is None or node.user.name != user):
                continue
            if not all_of_user and tag not in tags:
                continue
            ips = node.ipAddresses or ()
            if own_ips and not own_ips.isdisjoint(ips):
                continue  # this node itself
            key = (node.id, node.givenName, node.name, ips, tags)
            candidate = old[key] if key in old else self._candidate(node)
            cache[key] = candidate
            if candidate is not None and candidate.peer_id != self.node.peer_id:
                chosen.append(candidate)
        self._cache = cache
        if len(chosen) == len(self._last) and all(map(operator.is_, chosen, self._last)):
            return self._last_set
        self._last, self._last_set = chosen, frozenset(chosen)
        return self._last_set

    def _candidate(self, node: WireNode) -> PeerCandidate | None:
        """One candidate: every IP of the node at its port (port tag, legacy tag, or ours)."""
        port: int | None = None
        peer_id: PeerId | None = None
        prefix = self.config.port_tag_prefix
        for tag in sorted(node.tag_set):
            if tag.startswith(prefix) and port is None:
                port = self._port(node, tag[len(prefix) :])
            elif tag.startswith(LEGACY_PORT_TAG) and port is None:
                port = self._port(node, tag[len(LEGACY_PORT_TAG) :])
            elif tag.startswith(LEGACY_PEER_ID_TAG) and peer_id is None:
                try:
                    peer_id = PeerId.parse(tag[len(LEGACY_PEER_ID_TAG) :])
                except ValueError as exc:
                    self._warn(f"node {node.id} ({node.hostname}): ignoring {tag!r}: {exc}")
        port = port or self.node.port
        ips = parse_ips(node.ipAddresses or ())
        if not ips:
            self._warn(f"node {node.id} ({node.hostname}) has no IP address; skipped")
            return None
        if not port:
            self._warn(
                f"node {node.id} ({node.hostname}) has no port tag ({prefix}<port>) and this node "
                "listens on a random port; skipped"
            )
            return None
        return PeerCandidate(
            peer_id=peer_id,
            addresses=tuple(Address(host=str(ip), port=port) for ip in ips),
            metadata=(("headscale_node_id", str(node.id)), ("hostname", node.hostname)),
        )

    def _port(self, node: WireNode, text: str) -> int | None:
        if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535:
            return int(text)
        self._warn(f"node {node.id} ({node.hostname}): port tag with bad port {text!r} ignored")
        return None

    def _warn(self, message: str) -> None:
        if self.log is not None:
            self._said = self._said or LogOnce(self.log)
            self._said.warning(message, "%s", message)


def own_node(nodes: Iterable[WireNode], own_ips: frozenset[str]) -> WireNode | None:
    """This node's Headscale node: the one holding one of its Tailscale IPs."""
    for node in nodes:
        if not own_ips.isdisjoint(node.ipAddresses or ()):
            return node
    return None


# -- one run of discover_peers ----------------------------------------------------------------


@dataclass
class _Round:
    """What one run of ``discover_peers`` keeps between rounds."""

    plugin: HeadscalePlugin
    context: DiscoveryContext[HeadscaleConfig]
    config: HeadscaleConfig
    client: HeadscaleClient
    selector: Selector
    register_after: float = 0.0
    said: LogOnce = field(init=False)

    def __post_init__(self) -> None:
        self.selector.log = self.context.log
        self.said = LogOnce(self.context.log)

    async def fetch(self) -> frozenset[PeerCandidate]:
        nodes = await self.client.list_wire_nodes(self.config.user)
        self.said.info(
            "api",
            "Headscale %s speaks the %s API (%s)",
            self.config.api_url,
            self.client.api,
            "Headscale 0.23 or later" if self.client.api == "node" else "Headscale 0.22",
        )
        own = own_ips(self.context)
        if self.config.self_register:
            await self._register(nodes, own)
        peers = self.selector.select(nodes, own)
        if self.said.changed("count", len(peers)):
            self.context.log.info("Headscale: %d peer(s) among %d node(s)", len(peers), len(nodes))
        return peers

    async def _register(self, nodes: list[WireNode], own_ips: frozenset[str]) -> None:
        """Add the membership tag to this node's own node when it lacks it (rate-limited)."""
        log, tag = self.context.log, self.config.tag
        me = own_node(nodes, own_ips)
        if me is None:
            self.said.warning(
                "self_missing",
                "self_register: this node is not among the Headscale nodes (its IPs: %s); "
                "is tailscale up? With userspace networking set self_addresses",
                ", ".join(sorted(own_ips)) or "none found",
            )
            return
        self.said.clear("self_missing")
        if tag in me.tag_set or time.monotonic() < self.register_after:
            return
        current = me.tags if me.tag_field == "tags" else me.forcedTags
        from .api import HeadscaleError

        try:
            await self.client.set_tags(me.id, (*(current or ()), tag))
        except HeadscaleError as exc:
            self.register_after = time.monotonic() + self.plugin.register_retry
            self.said.warning(
                "register",
                "self_register: cannot tag node %d (%s) with %s: %s (retrying in %g s; the "
                "key needs write rights and the tag must be allowed by the policy)",
                me.id,
                me.hostname,
                tag,
                exc,
                self.plugin.register_retry,
            )
            return
        self.said.clear("register")
        log.info(
            "self_register: tagged this node (Headscale node %d, %s) with %s",
            me.id,
            me.hostname,
            tag,
        )


# -- doctor ------------------------------------------------------------------------------------


async def _doctor(
    plugin: HeadscalePlugin, context: DiscoveryContext[HeadscaleConfig], config: HeadscaleConfig
) -> list[CheckResult]:
    """URL, reachability and API generation, the key, then what the node list holds."""
    from .api import HeadscaleError

    url = config.api_url
    checks = [
        CheckResult(
            name="headscale: API URL",
            ok=True,
            detail=f"{url}"
            + (
                " (WARNING: plain HTTP to a remote host; the key crosses the network "
                "unencrypted, use https://)"
                if config.plain_http_remote
                else ""
            ),
        )
    ]
    if config.api_key is None:
        checks.append(
            CheckResult(
                name="headscale: API key",
                ok=False,
                detail="not set",
                fix=f"create one with `headscale apikeys create` and {context.how_to_set('api_key')}",
            )
        )
    async with plugin.client(config) as client:
        try:
            nodes = await client.list_wire_nodes(config.user)
        except HeadscaleError as exc:
            if exc.kind in ("auth", "too_large"):  # it answered: the key or the size is wrong
                checks.append(
                    CheckResult(
                        name="headscale: server reachable", ok=True, detail=f"{url} answers"
                    )
                )
            if exc.kind == "too_large":  # a 200: the key was accepted
                if config.api_key is not None:
                    checks.append(
                        CheckResult(name="headscale: API key", ok=True, detail="accepted")
                    )
                checks.append(
                    CheckResult(
                        name="headscale: node list size", ok=False, detail=str(exc), fix=exc.fix
                    )
                )
            elif exc.kind == "auth":
                if config.api_key is not None:
                    checks.append(
                        CheckResult(
                            name="headscale: API key", ok=False, detail=str(exc), fix=exc.fix
                        )
                    )
            else:
                checks.append(
                    CheckResult(
                        name="headscale: server reachable", ok=False, detail=str(exc), fix=exc.fix
                    )
                )
            return checks
    generation = (
        "node API /api/v1/node (Headscale 0.23 or later)"
        if client.api == "node"
        else "machine API /api/v1/machine (Headscale 0.22)"
    )
    checks.append(CheckResult(name="headscale: server reachable", ok=True, detail=generation))
    if config.api_key is not None:
        checks.append(CheckResult(name="headscale: API key", ok=True, detail="accepted"))
    selector = Selector(config, context.node)
    members = [n for n in nodes if selector.is_member(n)]
    online = [n for n in members if n.online]
    what = f"every node of user {config.user!r}" if config.all_nodes_of_user else config.tag
    scope = f" of user {config.user!r}" if config.user else ""
    checks.append(
        CheckResult(
            name="headscale: nodes",
            ok=bool(members),
            detail=f"{len(nodes)} visible{scope}, {len(members)} members ({what}), "
            f"{len(online)} of them online",
            fix=""
            if members
            else (
                f"tag the nodes with {config.tag}: `tailscale up --advertise-tags={config.tag}` "
                f"(declare it in the policy's tagOwners) or `headscale nodes tag`, or set "
                "self_register = true on each node"
                if nodes
                else "the key sees no nodes: check user, and that nodes have joined this server"
            ),
        )
    )
    own = own_ips(context)
    me = own_node(nodes, own)
    if me is not None:
        tagged = config.tag in me.tag_set
        checks.append(
            CheckResult(
                name="headscale: this node",
                ok=True,
                detail=f"Headscale node {me.id} ({me.hostname}), "
                + ("carries " if tagged else "lacks ")
                + config.tag
                + ("" if tagged or not config.self_register else "; self_register will add it"),
            )
        )
    else:
        checks.append(
            CheckResult(
                name="headscale: this node",
                ok=not config.self_register,
                detail="not found among the nodes by its Tailscale IPs ("
                + (", ".join(sorted(own)) or "none on this host")
                + ")",
                fix="run `tailscale up --login-server " + str(url) + "`; with userspace networking "
                "set self_addresses to this node's Tailscale IPs",
            )
        )
    return checks


plugin = HeadscalePlugin()
"""What the entry point names: the plugin with the system's transport and the default retries."""

__all__ = [
    "HeadscaleConfig",
    "HeadscalePlugin",
    "Selector",
    "own_ips",
    "own_node",
    "plugin",
]
