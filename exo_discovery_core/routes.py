"""Which address of a peer to try first: the most direct route wins.

Order: this host (loopback), the same LAN (an address inside one of our interfaces' networks),
then Tailscale (100.64.0.0/10, fd7a:115c:a1e0::/48), then anything else, then DNS names. IPv4 and
IPv6 are treated alike; within a rank the order the plugin gave is kept.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Literal

from .ip import LocalNetworks, is_tailscale, local_addresses, local_interfaces
from .models import Address

__all__ = [
    "LocalNetworks",
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


def listen_hosts(listen_host: str) -> list[str]:
    """Where a node bound to ``listen_host`` ("" for every interface) can be reached: each
    address of this host, IPv4 first, loopback last, link-local left out."""
    if listen_host:
        return [listen_host]
    ips = sorted(local_addresses(), key=lambda ip: (ip.version, ip.is_loopback, str(ip)))
    return [str(ip) for ip in ips if not ip.is_link_local] or ["127.0.0.1"]
