"""What kind of link an interface is: loopback, Thunderbolt, Ethernet, Wi-Fi, Tailscale, other.

The order of :class:`LinkClass` is the order of preference for reaching a peer (a Thunderbolt
cable before the LAN's Ethernet, before Wi-Fi, before the Tailscale tunnel, before anything
else). How an interface is told apart:

* **Linux** (``/sys/class/net/<name>``): ``type`` 772 is loopback; a ``tailscale*`` name is
  Tailscale; a ``wireless`` or ``phy80211`` entry is Wi-Fi; the ``thunderbolt-net`` driver is
  Thunderbolt; an Ethernet-type (``type`` 1) interface with a ``device`` (a real NIC, a VM's
  virtio NIC included) is Ethernet. A bridge, bond or VLAN is the best of the interfaces under it
  (``brif/``, ``lower_*``), so ``br0`` over ``eth0`` is Ethernet; everything else (veth, docker0
  and other bridges of virtual ports, tun/wireguard VPNs, dummy) is other.
* **macOS**: ``lo0`` is loopback; ``networksetup -listallhardwareports`` (where present) names
  each ``en*`` port (``Wi-Fi``, ``Thunderbolt 1``, ``Thunderbolt Ethernet``, ``USB 10/100/1000
  LAN``...); ``bridge*`` is the Thunderbolt Bridge; ``utun*`` is Tailscale when it carries a
  Tailscale address (decided by the address, see :func:`address_class`); without
  ``networksetup`` an ``en*`` port is other.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import IntEnum
from pathlib import Path

from .interfacefilter import InterfaceFilter
from .ip import IP, interface_addresses, is_tailscale
from .models import Address

SYSFS_NET = Path("/sys/class/net")
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
_MAX_DEPTH = 4  # bridges of bonds of VLANs: deep enough, and no loop can hang us


class LinkClass(IntEnum):
    """A link's kind; a lower value is a better path to a peer."""

    LOOPBACK = 0
    THUNDERBOLT = 1
    ETHERNET = 2
    WIFI = 3
    TAILSCALE = 4
    OTHER = 5

    def __str__(self) -> str:
        return {"WIFI": "wifi"}.get(self.name, self.name.lower())


def interface_class(
    name: str,
    *,
    system: str = sys.platform,
    sysfs: Path = SYSFS_NET,
    hardware_ports: Mapping[str, str] | None = None,
) -> LinkClass:
    """The class of the interface ``name`` on this (or the given) system."""
    if system.startswith("linux"):
        return _linux_class(sysfs, name, 0)
    if system == "darwin":
        ports = macos_hardware_ports() if hardware_ports is None else hardware_ports
        return macos_class(name, ports)
    return _by_name(name)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def _linux_class(sysfs: Path, name: str, depth: int) -> LinkClass:
    base = sysfs / name
    kind = _read(base / "type")
    if name == "lo" or kind == str(ARPHRD_LOOPBACK):
        return LinkClass.LOOPBACK
    if name.startswith("tailscale"):
        return LinkClass.TAILSCALE
    if (base / "wireless").exists() or (base / "phy80211").exists():
        return LinkClass.WIFI
    driver = (base / "device" / "driver").resolve().name if (base / "device").exists() else ""
    if driver in ("thunderbolt-net", "thunderbolt_net") or name.startswith("thunderbolt"):
        return LinkClass.THUNDERBOLT
    if kind == str(ARPHRD_ETHER) and (base / "device").exists():
        return LinkClass.ETHERNET
    if depth < _MAX_DEPTH:
        under = [p.name for p in _entries(base / "brif")] + [
            p.name.removeprefix("lower_") for p in _entries(base) if p.name.startswith("lower_")
        ]
        classes = [_linux_class(sysfs, n, depth + 1) for n in under if n != name]
        usable = [c for c in classes if c not in (LinkClass.LOOPBACK, LinkClass.OTHER)]
        if usable:
            return min(usable)
    return LinkClass.OTHER


def _entries(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except OSError:
        return []


_PORT_CLASSES = (
    (re.compile(r"wi-?fi|airport|wlan|wireless", re.I), LinkClass.WIFI),
    (re.compile(r"thunderbolt", re.I), LinkClass.THUNDERBOLT),
    (re.compile(r"ethernet|\blan\b|10/100", re.I), LinkClass.ETHERNET),
)


def macos_class(name: str, hardware_ports: Mapping[str, str]) -> LinkClass:
    """An interface's class from its name and ``networksetup``'s port names (device -> port)."""
    port = hardware_ports.get(name, "")
    for pattern, link in _PORT_CLASSES:
        if pattern.search(port):
            return link
    if name.startswith("bridge") and not port:
        return LinkClass.THUNDERBOLT  # macOS's own bridge is the Thunderbolt Bridge
    return _by_name(name)


def _by_name(name: str) -> LinkClass:
    if name in ("lo", "lo0"):
        return LinkClass.LOOPBACK
    if name.startswith("tailscale"):
        return LinkClass.TAILSCALE
    return LinkClass.OTHER


def parse_hardware_ports(text: str) -> dict[str, str]:
    """``networksetup -listallhardwareports`` as ``{device: hardware port}``."""
    ports: dict[str, str] = {}
    port = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Hardware Port":
            port = value.strip()
        elif key.strip() == "Device" and port:
            ports[value.strip()] = port
            port = ""
    return ports


@functools.cache
def macos_hardware_ports() -> dict[str, str]:
    """The port names of this Mac's interfaces, read once; empty without ``networksetup``."""
    tool = shutil.which("networksetup") or "/usr/sbin/networksetup"
    if not Path(tool).exists():
        return {}
    try:
        done = subprocess.run(
            [tool, "-listallhardwareports"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_hardware_ports(done.stdout) if done.returncode == 0 else {}


IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def address_class(
    ip: IP, scope: str | None, interfaces: Iterable[tuple[str, IPInterface, LinkClass]]
) -> LinkClass:
    """The class of the path to ``ip`` (a local or a peer's address): loopback and Tailscale by
    range, a link-local address by its scope's interface, else the interface whose network holds
    it (the link it is reached over), else other (routed somewhere beyond this host's links)."""
    if ip.is_loopback:
        return LinkClass.LOOPBACK
    if is_tailscale(ip):
        return LinkClass.TAILSCALE
    found: LinkClass | None = None
    for name, interface, link in interfaces:
        if scope and name != scope:
            continue
        if interface.ip == ip:
            return link  # one of our own addresses: the class of the interface it is on
        if ip in interface.network:
            found = link if found is None else min(found, link)
    return found if found is not None else LinkClass.OTHER


LinkEntry = tuple[str, IPInterface, LinkClass]
"""One address of one interface: the interface's name, the address with its network, its class."""


def local_links(interfaces: InterfaceFilter | None = None) -> list[LinkEntry]:
    """This host's interface addresses with their link classes (of the interfaces ``interfaces``
    allows, if given); each interface is classified once."""
    classes: dict[str, LinkClass] = {}
    entries: list[LinkEntry] = []
    for entry in interface_addresses():
        if interfaces is not None and not interfaces.allows(entry.name, entry.nice_name):
            continue
        if entry.name not in classes:
            classes[entry.name] = interface_class(entry.name)
        entries.append((entry.name, entry.interface, classes[entry.name]))
    return entries


class LinkMap:
    """The class of the path to any address, from this host's links re-read at most every
    ``max_age`` seconds (interfaces come and go: a Thunderbolt cable plugged in)."""

    def __init__(
        self, read: Callable[[], Iterable[LinkEntry]] = local_links, max_age: float = 10.0
    ) -> None:
        self.read = read
        self.max_age = max_age
        self._read_at = -max_age
        self._entries: list[LinkEntry] = []

    def entries(self) -> list[LinkEntry]:
        if time.monotonic() - self._read_at >= self.max_age:
            self._entries = list(self.read())
            self._read_at = time.monotonic()
        return self._entries

    def of(self, address: Address) -> LinkClass:
        """The class of the path to ``address`` (a DNS name: other, until it is resolved).

        The links are read only if the address's range does not decide it: a loopback or a
        Tailscale peer never needs them (reading them loads ifaddr and ctypes, ~0.4 MiB of a
        node's memory, and walks every interface again each ``max_age``)."""
        ip = address.ip
        if ip is None:
            return LinkClass.OTHER
        scope = address.host.partition("%")[2] or None
        return address_class(ip, scope, self._entries_when_read())

    def _entries_when_read(self) -> Iterator[LinkEntry]:
        yield from self.entries()
