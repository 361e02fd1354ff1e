"""Which address of a peer to try first: the most direct route wins.

Order: this host (loopback), the same LAN (an address inside one of our interfaces' networks),
then Tailscale (100.64.0.0/10, fd7a:115c:a1e0::/48), then anything else, then DNS names. IPv4 and
IPv6 are treated alike; within a rank the order the plugin gave is kept.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable

import ifaddr

from .models import TAILSCALE_NETWORKS, Address

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def local_interfaces() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Every address of this host's interfaces with its network (``ifaddr``, zone ids dropped)."""
    found: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                found.append(ipaddress.ip_interface(f"{text.split('%')[0]}/{ip.network_prefix}"))
            except ValueError:
                continue
    return found


def local_addresses() -> set[IPAddress]:
    """This host's interface addresses, loopback included: what "our own address" means."""
    return {iface.ip for iface in local_interfaces()}


def is_tailscale(ip: IPAddress) -> bool:
    return any(ip in net for net in TAILSCALE_NETWORKS)


class LocalNetworks:
    """This host's addresses and networks, re-read at most every ``max_age`` seconds."""

    def __init__(self, max_age: float = 30.0) -> None:
        self.max_age = max_age
        self._read_at = -max_age
        self._networks: list[IPNetwork] = []
        self._addresses: set[IPAddress] = set()

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at < self.max_age:
            return
        interfaces = local_interfaces()
        self._addresses = {iface.ip for iface in interfaces}
        self._networks = [
            iface.network
            for iface in interfaces
            if not iface.ip.is_loopback and not iface.ip.is_link_local
        ]
        self._read_at = time.monotonic()

    def is_local_address(self, ip: IPAddress) -> bool:
        self._refresh()
        return ip.is_loopback or ip.is_unspecified or ip in self._addresses

    def on_same_lan(self, ip: IPAddress) -> bool:
        self._refresh()
        return any(ip in net for net in self._networks)


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
