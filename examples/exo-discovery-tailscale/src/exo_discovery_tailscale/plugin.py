"""The Tailscale plugin: the online peers of this machine's tailnet that carry the membership tag.

It asks the local tailscaled (``/localapi/v0/status`` over its unix socket) through the core's
``poll``, so failures keep the last good set and back off. A background task of the plugin
(``context.start_soon``) follows the IPN bus (``/localapi/v0/watch-ipn-bus``, see :mod:`.bus`)
and sets the poll's ``Trigger`` whenever the network map changes, so a peer that goes offline is dropped within moments instead of one poll
interval. If the bus cannot be followed, it says so once and plain polling carries on.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from pydantic import BaseModel

from exo_discovery_core import (
    Address,
    CheckResult,
    DiscoveryContext,
    LogOnce,
    PeerCandidate,
    PeerSets,
    SourceError,
    Trigger,
    hookimpl,
    parse_ips,
    poll,
)

from .bus import BusFollower
from .config import TailscaleConfig
from .localapi import (
    FIX_START,
    FIX_UP,
    BusReader,
    LocalAPI,
    LocalAPIError,
    PeerStatus,
    Status,
    default_sockets,
    find_socket,
)

RUNNING_STATES = frozenset({"Running", "Starting"})
"""States in which the network map is current; in the others tailscaled has no usable peers."""
DOWN_STATES = frozenset({"Stopped", "NeedsLogin", "NeedsMachineAuth", "InUseOtherUser"})
"""States the user chose or must fix: no peers are reachable, so the set is empty (not kept)."""


# -- which peers count -------------------------------------------------------------------------


def is_member(peer: PeerStatus, config: TailscaleConfig) -> bool:
    """Tagged with the membership tag (or any peer with ``all_peers``)."""
    return config.all_peers or config.tag in (peer.tags or ())


def candidate(peer: PeerStatus, port: int) -> PeerCandidate | None:
    """Every Tailscale IP of ``peer`` (IPv4 first) at ``port``; None if it has no valid IP."""
    ips = parse_ips(peer.tailscale_ips)
    if not ips:
        return None
    metadata = {
        "hostname": peer.host_name,
        "dns_name": peer.dns_name.rstrip("."),
        "tailscale_id": peer.id,
    }
    return PeerCandidate(
        addresses=tuple(Address(host=str(ip), port=port) for ip in ips),
        metadata=tuple(sorted((k, v) for k, v in metadata.items() if v)),
    )


def select(status: Status, config: TailscaleConfig, port: int) -> frozenset[PeerCandidate]:
    """The candidates of one status: online, unexpired members, never this machine itself."""
    me = status.self_
    own_ips = set(me.tailscale_ips if me else ()) | set(status.tailscale_ips or ())
    found = set()
    for peer in status.peers:
        if not peer.online or peer.expired or not is_member(peer, config):
            continue
        if (me is not None and peer.id and peer.id == me.id) or own_ips & set(peer.tailscale_ips):
            continue
        made = candidate(peer, port)
        if made is not None:
            found.add(made)
    return frozenset(found)


# -- one run of discover_peers -----------------------------------------------------------------


@dataclass
class _Source:
    """What one run of ``discover_peers`` keeps: the client (per socket path) and what it logged."""

    config: TailscaleConfig
    port: int
    log: logging.Logger
    api: LocalAPI | None = None
    said: LogOnce = field(init=False)

    def __post_init__(self) -> None:
        self.said = LogOnce(self.log)

    async def client(self) -> LocalAPI:
        """The client for the socket in use; re-resolved so a daemon started later is found."""
        path = find_socket(self.config.socket)
        if self.api is not None and self.api.socket != path:
            await self.api.aclose()
            self.api = None
        if self.api is None:
            self.api = LocalAPI(path, timeout=self.config.timeout)
        return self.api

    async def aclose(self) -> None:
        if self.api is not None:
            await self.api.aclose()

    async def fetch(self) -> frozenset[PeerCandidate]:
        """One round for ``poll``: read the status, pick the peers."""
        status = await (await self.client()).status()
        state = status.backend_state
        if state not in RUNNING_STATES and state not in DOWN_STATES:
            raise SourceError(f"tailscaled is in state {state or 'unknown'!r} (starting?)")
        known = "state" in self.said
        if self.said.changed("state", state):
            if state in DOWN_STATES:
                self.log.warning(
                    "tailscaled is %s: no Tailscale peers until it is up (%s)", state, FIX_UP
                )
            elif known:
                self.log.info("tailscaled is %s again", state)
        peers = frozenset() if state in DOWN_STATES else select(status, self.config, self.port)
        if self.said.changed("count", len(peers)):
            what = (
                "online peers" if self.config.all_peers else f"online peers with {self.config.tag}"
            )
            self.log.info("Tailscale: %d %s", len(peers), what)
        return peers


@hookimpl
async def discover_peers(context: DiscoveryContext[TailscaleConfig]) -> PeerSets:
    """The online tagged peers of the tailnet, re-read when the IPN bus says something changed."""
    config = context.config
    source = _Source(config, config.port or context.node.port, context.log)
    trigger = Trigger()
    if config.watch:
        follower = BusFollower(
            lambda: find_socket(config.socket),
            trigger=trigger,
            log=context.log,
            retry=config.poll_interval,
            timeout=config.timeout,
        )
        context.start_soon(follower.run)  # cancelled by the node when this iterator ends
    sets = poll(
        source.fetch,
        interval=config.poll_interval,
        log=context.log,
        what="Tailscale LocalAPI status",
        timeout=config.timeout + 1.0,
        trigger=trigger,
        report_health=context.report_health,
        report_idle=context.report_idle,
    )
    try:
        async with aclosing(sets):
            async for peers in sets:
                yield peers
    finally:
        await source.aclose()


# -- doctor ------------------------------------------------------------------------------------


async def _doctor(context: DiscoveryContext[TailscaleConfig]) -> list[CheckResult]:
    """Socket, daemon state, then what the peer list holds and whether this node is tagged."""
    config = context.config
    path = find_socket(config.socket)
    if not path.exists():
        tried = [str(config.socket)] if config.socket else [str(p) for p in default_sockets()]
        return [  # not a failure: this machine has no Tailscale, so the plugin stays idle
            CheckResult(
                name="tailscale: socket",
                ok=True,
                detail=f"no tailscaled on this machine (no socket at {' or '.join(tried)}), so "
                f"the plugin stays idle; to use it, {FIX_START}",
            )
        ]
    checks = [CheckResult(name="tailscale: socket", ok=True, detail=str(path))]
    async with LocalAPI(path, timeout=config.timeout) as api:
        try:
            status = await api.status()
        except LocalAPIError as exc:
            checks.append(
                CheckResult(name="tailscale: daemon", ok=False, detail=str(exc), fix=exc.fix)
            )
            return checks
        state = status.backend_state
        running = state == "Running"
        checks.append(
            CheckResult(
                name="tailscale: daemon",
                ok=running,
                detail=f"tailscaled {status.version or '(version unknown)'} is {state or 'unknown'}",
                fix="" if running else FIX_UP,
            )
        )
        if not running:
            return checks
        checks.append(_peers_check(status, config, config.port or context.node.port))
        checks.append(_self_check(status, config))
        if config.watch:
            checks.append(await _watch_check(path, config.timeout))
    return checks


def _peers_check(status: Status, config: TailscaleConfig, port: int) -> CheckResult:
    peers = status.peers
    online = [p for p in peers if p.online]
    members = select(status, config, port)
    what = "online peers (all_peers)" if config.all_peers else f"online with {config.tag}"
    return CheckResult(
        name="tailscale: peers",
        ok=bool(members),
        detail=f"{len(peers)} peers, {len(online)} online, {len(members)} {what}; dialed on port {port}",
        fix=""
        if members
        else (
            f"tag the other nodes: `tailscale up --advertise-tags={config.tag}` on each (the "
            "tag must be in the policy's tagOwners), or set all_peers = true"
            if online
            else "no other node of the tailnet is online: start tailscale on the other machines"
        ),
    )


def _self_check(status: Status, config: TailscaleConfig) -> CheckResult:
    me = status.self_
    tags = (me.tags or ()) if me else ()
    tagged = config.tag in tags
    name = (me.dns_name.rstrip(".") or me.host_name) if me else "this node"
    return CheckResult(
        name="tailscale: this node",
        ok=tagged or config.all_peers,
        detail=f"{name} ({', '.join(status.tailscale_ips or ()) or 'no IP'}) "
        + (f"carries {config.tag}" if tagged else f"lacks {config.tag}")
        + (" (all_peers: tags not needed)" if config.all_peers and not tagged else ""),
        fix=""
        if tagged or config.all_peers
        else f"other nodes will not find this one: `tailscale up --advertise-tags={config.tag}`",
    )


async def _watch_check(path: Path, timeout: float) -> CheckResult:
    """The IPN bus answers with its first message (NotifyInitialState) at once."""
    reader = BusReader(path, timeout=timeout)

    def first_note() -> None:
        notes = reader.notes()
        try:
            if next(notes, None) is None:
                raise LocalAPIError("the stream ended before its first message")
        finally:
            notes.close()

    try:
        with anyio.fail_after(timeout):
            await anyio.to_thread.run_sync(first_note, abandon_on_cancel=True)
    except (LocalAPIError, TimeoutError) as exc:
        reader.interrupt()
        return CheckResult(
            name="tailscale: IPN bus",
            ok=False,
            detail=f"cannot follow it ({exc or 'no first message'}); changes are seen by polling",
            fix="upgrade tailscaled, or set watch = false to silence this",
        )
    return CheckResult(name="tailscale: IPN bus", ok=True, detail="changes are seen at once")


# -- hooks --------------------------------------------------------------------------------------


@hookimpl
def config_model() -> type[BaseModel]:
    """The ``[plugins.tailscale]`` table (socket, tag, all_peers, port, poll_interval, ...)."""
    return TailscaleConfig


@hookimpl
async def doctor(context: DiscoveryContext[TailscaleConfig]) -> list[CheckResult]:
    """Socket found, daemon Running, peers online and tagged, this node tagged, bus followable."""
    return await _doctor(context)


__all__ = [
    "TailscaleConfig",
    "candidate",
    "config_model",
    "discover_peers",
    "doctor",
    "is_member",
    "select",
]
