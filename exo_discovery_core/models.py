"""The data a plugin yields and hears: addresses, peer candidates, connection events."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .identity import PeerId

ConfigT = TypeVar("ConfigT", bound=BaseModel)

TAILSCALE_NETWORKS = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)


class Address(BaseModel):
    """A TCP address a peer may be reached at. ``host`` is an IP literal or a DNS name."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)

    @field_validator("host")
    @classmethod
    def _normalise_host(cls, value: str) -> str:
        text = value.strip().removeprefix("[").removesuffix("]")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return text.lower().rstrip(".")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)  # a dual-stack listener's view of an IPv4 peer
        return str(ip)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The IP when ``host`` is a literal, else None (a DNS name)."""
        try:
            return ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return None

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

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED


@dataclass(frozen=True)
class NodeInfo:
    """The node itself, as a plugin needs to know it (to announce itself, to skip itself)."""

    peer_id: PeerId
    namespace: str
    port: int
    listen_addresses: tuple[Address, ...]


BackgroundTask = Callable[[], Coroutine[Any, Any, None]]


def _no_background(task: BackgroundTask) -> None:
    raise RuntimeError("start_soon is only available while the node runs the plugin")


@dataclass(frozen=True)
class DiscoveryContext(Generic[ConfigT]):
    """Everything a plugin's hooks get from the node, in one argument so the contract can grow.

    ``start_soon(fn)`` runs ``await fn()`` beside the plugin's iterator (a watch stream that sets
    a :class:`~exo_discovery_core.Trigger`); it is cancelled when the iterator ends or fails, so a
    plugin never holds a task group open across a ``yield``.
    """

    plugin_name: str
    config: ConfigT
    node: NodeInfo
    state_dir: Path
    log: logging.Logger
    report_health: Callable[[bool, str], None] = field(default=lambda ok, message: None)
    start_soon: Callable[[BackgroundTask], None] = field(default=_no_background)


class CheckResult(BaseModel):
    """One line of ``exo-discovery doctor``: what was checked, whether it passed, how to fix it."""

    model_config = ConfigDict(defer_build=True)

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
