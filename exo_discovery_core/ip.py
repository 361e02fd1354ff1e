"""IP addresses: the one parser (zone-aware), this host's interfaces (one walk over ``ifaddr``),
and Tailscale's ranges. Plugins and the core ask here instead of parsing addresses themselves.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ifaddr

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
"""An IPv4 or IPv6 address, as :func:`parse_ip` returns it."""
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

TAILSCALE_NETWORKS = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)


def unbracketed(text: str) -> str:
    """``text`` without the brackets of a URL's IPv6 host (``[::1]``) or surrounding spaces."""
    return text.strip().removeprefix("[").removesuffix("]")


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IP | None:
    """The IP in ``text``, or None when it is not one (a DNS name, garbage).

    Brackets (``[::1]``) and an IPv6 zone (``fe80::1%eth0``) are dropped, and an IPv4-mapped IPv6
    address (a dual-stack listener's view of an IPv4 peer) is the IPv4 address it maps.
    Remembered for the last 4,096 texts (IP objects are immutable): ``Address.ip`` asks it for
    every address each time, and the dialer looks at every connected peer's addresses every
    second (an idle 50-node mesh spent most of its CPU parsing the same 49 addresses again).
    """
    bare = unbracketed(text).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_ips(texts: Iterable[str]) -> tuple[IP, ...]:
    """The valid IPs among ``texts``, without duplicates, IPv4 first; the others are skipped."""
    found = {ip for ip in map(parse_ip, texts) if ip is not None}
    return tuple(sorted(found, key=lambda ip: (ip.version, ip)))


def is_tailscale(ip: IP) -> bool:
    return any(ip in net for net in TAILSCALE_NETWORKS)


@dataclass(frozen=True)
class Interface:
    """One network interface: its names, its index, and its addresses (zones dropped), which may
    be none (an interface that is down or not configured yet)."""

    name: str
    nice_name: str
    index: int | None
    addresses: tuple[IPInterface, ...]


@dataclass(frozen=True)
class InterfaceAddress:
    """One address of one network interface: the interface's names and index, the IP (zone
    dropped) and its network."""

    name: str
    nice_name: str
    index: int | None
    interface: IPInterface

    @property
    def ip(self) -> IP:
        return self.interface.ip


def interfaces(adapters: Sequence[ifaddr.Adapter] | None = None) -> list[Interface]:
    """This host's interfaces (or ``adapters``, for tests), as ``ifaddr`` reports them: the one
    walk over them; an entry that is not an IP is skipped.

    ``ifaddr`` is imported here, on the first walk: it loads ctypes (half a MiB of a node's
    memory), and a node that never asks for its interfaces does not pay for it."""
    import ifaddr

    found: list[Interface] = []
    for adapter in ifaddr.get_adapters() if adapters is None else adapters:
        addresses: list[IPInterface] = []
        for entry in adapter.ips:
            text = entry.ip[0] if isinstance(entry.ip, tuple) else entry.ip
            ip = parse_ip(str(text))
            if ip is None:
                continue
            try:
                addresses.append(ipaddress.ip_interface(f"{ip}/{entry.network_prefix}"))
            except ValueError:
                continue
        index = adapter.index
        found.append(
            Interface(
                name=str(adapter.name),
                nice_name=str(adapter.nice_name),
                index=int(index) if index is not None else None,
                addresses=tuple(addresses),
            )
        )
    return found


def interface_addresses(adapters: Sequence[ifaddr.Adapter] | None = None) -> list[InterfaceAddress]:
    """Every address of this host's interfaces (or of ``adapters``), one entry each."""
    return [
        InterfaceAddress(iface.name, iface.nice_name, iface.index, address)
        for iface in interfaces(adapters)
        for address in iface.addresses
    ]


def local_interfaces() -> list[IPInterface]:
    """Every address of this host's interfaces with its network."""
    return [entry.interface for entry in interface_addresses()]


def local_addresses() -> set[IP]:
    """This host's interface addresses, loopback included: what "our own address" means."""
    return {entry.ip for entry in interface_addresses()}


class LocalNetworks:
    """This host's addresses and networks, re-read at most every ``max_age`` seconds.

    ``read`` is where they come from (this host's interfaces; a test gives its own).
    """

    def __init__(
        self, max_age: float = 30.0, read: Callable[[], Iterable[IPInterface]] = local_interfaces
    ) -> None:
        self.max_age = max_age
        self.read = read
        self._read_at = -max_age
        self._networks: list[IPNetwork] = []
        self._addresses: frozenset[IP] = frozenset()

    def _refresh(self) -> None:
        if time.monotonic() - self._read_at < self.max_age:
            return
        interfaces = list(self.read())
        self._addresses = frozenset(iface.ip for iface in interfaces)
        self._networks = [
            iface.network
            for iface in interfaces
            if not iface.ip.is_loopback and not iface.ip.is_link_local
        ]
        self._read_at = time.monotonic()

    @property
    def addresses(self) -> frozenset[IP]:
        self._refresh()
        return self._addresses

    def is_local_address(self, ip: IP) -> bool:
        return ip.is_loopback or ip.is_unspecified or ip in self.addresses

    def on_same_lan(self, ip: IP) -> bool:
        self._refresh()
        return any(ip in net for net in self._networks)
