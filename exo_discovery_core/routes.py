"""Which address of a peer to try first: the best link, then the fastest, then the most direct.

:class:`Paths` orders a peer's addresses by the class of the link each is reached over
(loopback, Thunderbolt, Ethernet, Wi-Fi, Tailscale, other: :mod:`.links`), then by the round
trip last measured to it (the TCP connect of a dial), then by :func:`rank`: this host
(loopback), the same LAN (an address inside one of our interfaces' networks), Tailscale
(100.64.0.0/10, fd7a:115c:a1e0::/48), anything else, DNS names. IPv4 and IPv6 are treated
alike; within all of that the order the plugin gave is kept.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from .interfacefilter import InterfaceFilter
from .ip import LocalNetworks, interface_addresses, is_tailscale, local_addresses, local_interfaces
from .links import LinkClass, LinkMap
from .models import Address

RTT_SMOOTHING = 0.5
"""Weight of a new round-trip measurement against the ones before (an EWMA)."""

__all__ = [
    "LocalNetworks",
    "Paths",
    "RouteClass",
    "by_preference",
    "is_tailscale",
    "local_addresses",
    "local_interfaces",
    "rank",
    "route_class",
]

RouteClass = Literal["loopback", "lan", "tailscale", "private", "public", "name"]
"""How direct the route to an address is, most direct first (the order of :func:`rank`)."""
_ROUTE_CLASSES: tuple[RouteClass, ...] = (
    "loopback",
    "lan",
    "tailscale",
    "private",
    "public",
    "name",
)


def rank(address: Address, local: LocalNetworks) -> int:
    ip = address.ip
    if ip is None:
        return 5
    if ip.is_loopback:
        return 0
    if is_tailscale(ip):
        return 2
    if local.on_same_lan(ip) or ip.is_link_local:
        return 1
    return 3 if ip.is_private else 4


def route_class(address: Address, local: LocalNetworks) -> RouteClass:
    """The name of ``address``'s rank: this host, the same LAN, Tailscale, another private
    network, the internet, or a DNS name not yet resolved."""
    return _ROUTE_CLASSES[rank(address, local)]


def by_preference(addresses: Iterable[Address], local: LocalNetworks) -> list[Address]:
    return sorted(addresses, key=lambda a: rank(a, local))


class Paths:
    """What the node knows of the paths to its peers: each address's link class and the round
    trip measured to it. One per running node; the dialer orders by it and records into it."""

    def __init__(self, local: LocalNetworks, links: LinkMap | None = None) -> None:
        self.local = local
        self.links = links or LinkMap()
        self._rtt: dict[Address, float] = {}

    def link(self, address: Address) -> LinkClass:
        return self.links.of(address)

    def rtt(self, address: Address) -> float | None:
        """Seconds, smoothed; None until measured."""
        return self._rtt.get(address)

    def measured(self, address: Address, seconds: float) -> None:
        old = self._rtt.get(address)
        self._rtt[address] = seconds if old is None else old + RTT_SMOOTHING * (seconds - old)
        if len(self._rtt) > 10_000:  # addresses come and go; what we remember is bounded
            self._rtt.pop(next(iter(self._rtt)))

    def key(self, address: Address) -> tuple[LinkClass, float, int]:
        rtt = self._rtt.get(address)
        return self.link(address), float("inf") if rtt is None else rtt, rank(address, self.local)

    def ordered(self, addresses: Iterable[Address]) -> list[Address]:
        """Best first: link class, then measured round trip, then rank (stable)."""
        return sorted(addresses, key=self.key)


def usable_from_peer(address: Address, *, sender_on_this_host: bool) -> bool:
    """Whether an address another node told us (in a signed record) is one we may dial.

    IP literals only (a name from a peer would make us query a resolver for it); no address that
    names no single host (unspecified, multicast, broadcast, reserved); no IPv4 link-local (cloud
    metadata lives at 169.254.169.254) and no IPv6 link-local without its zone; loopback only
    when the node that told us is on this host itself.
    """
    ip = address.ip
    if ip is not None and ip.is_loopback:
        return sender_on_this_host
    if ip is None or ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return False
    if isinstance(ip, ipaddress.IPv4Address) and (ip.is_link_local or ip.packed == b"\xff" * 4):
        return False
    return not ip.is_link_local or "%" in address.host  # a zone says which link it is on


def advertised(
    port: int, advertise: Iterable[str], listen_host: str, interfaces: InterfaceFilter | None
) -> tuple[Address, ...]:
    """What a node advertises (its signed record, plugins): ``advertise_addresses`` when set (NAT,
    a container), else the addresses of the interfaces ``[node] interfaces`` allows."""
    from .targetgroups import target_address  # the same host[:port] forms as peers files

    if given := list(advertise):
        return tuple(target_address(text, port) for text in given)
    return tuple(Address(host=host, port=port) for host in listen_hosts(listen_host, interfaces))


def listen_hosts(listen_host: str, interfaces: InterfaceFilter | None = None) -> list[str]:
    """Where a node bound to ``listen_host`` ("" for every interface) can be reached: each
    address of this host's interfaces that ``interfaces`` allows (no docker0 by default), IPv4
    first, loopback last, link-local left out."""
    if listen_host:
        return [listen_host]
    chosen = interfaces or InterfaceFilter(exclude=())
    ips = {e.ip for e in interface_addresses() if chosen.allows(e.name, e.nice_name)}
    ordered = sorted(ips, key=lambda ip: (ip.version, ip.is_loopback, str(ip)))
    return [str(ip) for ip in ordered if not ip.is_link_local] or ["127.0.0.1"]
