"""The data a plugin yields and hears: addresses, peer candidates, connection events."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .identity import PeerId
from .interfacefilter import InterfaceFilter
from .ip import IP, LocalNetworks, parse_ip, unbracketed
from .optionhelp import how_to_set
from .text import encodable

ConfigT = TypeVar("ConfigT", bound=BaseModel)

_DNS_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*")
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # an interface name (eth0, en0) or index
OWN_ADDRESSES_MAX_AGE = 2.0
"""How long this host's interface addresses are reused before they are read again."""


class Address(BaseModel):
    """A TCP address a peer may be reached at. ``host`` is an IP literal or a DNS name."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _normalise_host(cls, value: str) -> str:
        ip = parse_ip(value)
        if ip is None:
            name = unbracketed(value).lower().rstrip(".")
            if not _DNS_NAME.fullmatch(name):  # an address is shown and logged: no stray text
                raise ValueError(
                    f"{value[:60]!r} is neither an IP address nor a DNS name "
                    "(labels of a-z 0-9 - _ joined by dots)"
                )
            return name
        if ip.version == 6 and "%" in value:  # a scoped address keeps its zone: needed to dial
            zone = value.strip().removesuffix("]").split("%", 1)[1]
            if not _ZONE.fullmatch(zone):
                raise ValueError(
                    f"{value[:60]!r} has a zone that is not an interface name or index"
                )
            return f"{ip}%{zone}"
        return str(ip)

    @property
    def ip(self) -> IP | None:
        """The IP when ``host`` is a literal, else None (a DNS name)."""
        return parse_ip(self.host)

    def __str__(self) -> str:
        ip = self.ip
        return (
            f"[{self.host}]:{self.port}"
            if ip is not None and ip.version == 6
            else (f"{self.host}:{self.port}")
        )

    def multiaddr(self) -> str:
        ip = self.ip
        proto = "dns" if ip is None else f"ip{ip.version}"
        return f"/{proto}/{self.host}/tcp/{self.port}"


class PeerCandidate(BaseModel):
    """One peer as a discovery method sees it: maybe an id, one or more addresses.

    Without a ``peer_id`` the node learns who answers in the handshake; with one, a different
    answering peer is refused. ``metadata`` is free-form (a hostname, tags) and shown to users.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    peer_id: PeerId | None = None
    addresses: tuple[Address, ...] = Field(min_length=1)
    metadata: tuple[tuple[str, str], ...] = ()

    @field_validator("metadata")
    @classmethod
    def _encodable(cls, value: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """Text UTF-8 can carry: a lone surrogate (a JSON ``\\ud800`` from a server) becomes
        "?", so every JSON output stays valid; everything else is kept as it came."""
        return tuple((encodable(k), encodable(v)) for k, v in value)

    @classmethod
    def at(cls, host: str, port: int, peer_id: str | None = None, **metadata: str) -> PeerCandidate:
        """Shorthand for one address: ``PeerCandidate.at("10.0.0.2", 52417)``."""
        return cls(
            peer_id=PeerId.parse(peer_id) if peer_id else None,
            addresses=(Address(host=host, port=port),),
            metadata=tuple(sorted(metadata.items())),
        )

    @property
    def key(self) -> str:
        """What identifies this candidate across rounds: its peer id, else its addresses."""
        return str(self.peer_id) if self.peer_id else ",".join(sorted(map(str, self.addresses)))


class ConnectionState(IntEnum):
    DISCONNECTED = 0
    CONNECTED = 1


class ConnectionEvent(BaseModel):
    """What ``on_connection`` hears: exactly one per real transition of a peer."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    peer_id: PeerId
    state: ConnectionState
    address: Address | None = Field(description="The address in use (None if the host reported it)")
    sources: frozenset[str] = Field(description="The plugins that reported this peer")
    reason: str = ""
    meta: Mapping[str, str] = Field(
        default_factory=dict,
        description="The peer's metadata, from its own signed record (empty if it set none)",
    )

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED


PeerSets = AsyncIterator[Iterable[PeerCandidate]]
"""What ``discover_peers`` returns: an async iterator of peer sets, each the whole set seen now."""


@dataclass(frozen=True)
class NodeInfo:
    """The node itself, as a plugin needs to know it (to announce itself, to skip itself).

    ``local`` is this host's interfaces (a test gives its own); :meth:`is_own` is the one answer
    to "is this address mine". ``listen_addresses`` is what the node advertises: its interfaces'
    addresses (those ``interfaces`` allows) or ``[node] advertise_addresses``.
    """

    peer_id: PeerId
    namespace: str
    port: int
    listen_addresses: tuple[Address, ...]
    local: LocalNetworks = field(
        default_factory=lambda: LocalNetworks(max_age=OWN_ADDRESSES_MAX_AGE),
        repr=False,
        compare=False,
    )
    # fingerprints of the accepted cluster keys (clusterkey.fingerprint), primary first; an
    # announcement may carry them so that nodes of other clusters are skipped before a dial
    cluster_key_fingerprints: tuple[str, ...] = ()
    interfaces: InterfaceFilter = field(default_factory=InterfaceFilter, compare=False)
    advertised_explicitly: bool = False
    """``listen_addresses`` are ``[node] advertise_addresses`` (NAT, a container): a plugin that
    announces addresses (mDNS) announces these instead of its interfaces'."""
    """The interfaces the node uses (``[node] interfaces`` / ``exclude_interfaces``): a plugin
    that binds to interfaces (mDNS) uses only these."""

    def own_ips(self) -> frozenset[IP]:
        """This node's IPs: every address of this host's interfaces and each listen address."""
        listen = {a.ip for a in self.listen_addresses if a.ip is not None}
        return self.local.addresses | {ip for ip in listen if not ip.is_unspecified}

    def is_own(self, address: IP | str | Address) -> bool:
        """True when ``address`` is this host: loopback, unspecified or one of :meth:`own_ips`."""
        ip = address.ip if isinstance(address, Address) else address
        if isinstance(ip, str):
            ip = parse_ip(ip)
        if ip is None:
            return False
        return self.local.is_local_address(ip) or any(a.ip == ip for a in self.listen_addresses)


BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


def _no_background(task: BackgroundTask) -> None:
    raise RuntimeError("start_soon is only available while the node runs the plugin")


@dataclass(frozen=True)
class DiscoveryContext(Generic[ConfigT]):
    """Everything a plugin's hooks get from the node, in one argument so the contract can grow.

    ``start_soon(fn)`` runs ``await fn()`` beside the plugin's iterator (a watch stream that sets
    a :class:`~exo_discovery_core.Trigger`); it is cancelled when the iterator ends or fails, so a
    plugin never holds a task group open across a ``yield``.

    ``report_health(ok, message)`` says the plugin works (and what it sees) or why not;
    ``report_idle(message)`` that it has nothing to do here and how to change that (not
    configured, its daemon not on this machine). Users see ``ok``, ``failing`` or ``idle``.
    """

    plugin_name: str
    config: ConfigT
    node: NodeInfo
    state_dir: Path
    log: logging.Logger
    report_health: Callable[[bool, str], None] = field(default=lambda ok, message: None)
    report_idle: Callable[[str], None] = field(default=lambda message: None)
    start_soon: Callable[[BackgroundTask], None] = field(default=_no_background)

    def how_to_set(self, *keys: str) -> str:
        """How a user sets ``keys`` of this plugin's config (default: its ``needed`` options),
        rendered from their ``option`` declarations: for idle messages and ``doctor`` fixes."""
        return how_to_set(type(self.config), f"[plugins.{self.plugin_name}]", keys)


class CheckResult(BaseModel):
    """One line of ``exo-discovery doctor``: what was checked, whether it passed, how to fix it."""

    model_config = ConfigDict(defer_build=True)

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
