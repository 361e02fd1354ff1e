"""This host's interfaces as mDNS sees them: what zeroconf binds to and which addresses we announce.

Re-read every few seconds (interfaces come and go: Wi-Fi joins, a VPN comes up); a changed
snapshot is what makes the plugin rebind zeroconf and re-announce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr

from exo_discovery_core import IP, interfaces
from exo_discovery_core.interfacefilter import InterfaceFilter

#: zeroconf's explicit interface list: IPv4 addresses as text, IPv6 interfaces by index.
ZcInterface = str | int


@dataclass(frozen=True)
class Snapshot:
    """The interfaces in use now; equal snapshots mean nothing to do."""

    bind: tuple[ZcInterface, ...]
    """What zeroconf should bind to (IPv4 loopback included: nodes on a host without network)."""
    announce: tuple[str, ...]
    """The addresses we announce: non-loopback, not link-local IPv6 (a peer could not dial it)."""
    unmatched: tuple[str, ...] = ()
    """Configured interface names/IPs that match nothing here (now)."""


def _wanted(ip: IP, ip_version: str) -> bool:
    return not (
        (ip.version == 4 and ip_version == "v6") or (ip.version == 6 and ip_version == "v4")
    )


def snapshot(
    selection: str | Sequence[str],
    ip_version: str,
    adapters: Sequence[ifaddr.Adapter] | None = None,
    node_interfaces: InterfaceFilter | None = None,
) -> Snapshot:
    """The interfaces selected by ``selection`` ("all" or names/IPs) and ``ip_version``, among
    those the node uses (``[node] interfaces`` / ``exclude_interfaces``: no docker0 by default)."""
    here = [
        iface
        for iface in interfaces(adapters)
        if node_interfaces is None or node_interfaces.allows(iface.name, iface.nice_name)
    ]
    wanted_names = None if selection == "all" else {s for s in selection}
    bind: set[ZcInterface] = set()
    announce: set[str] = set()
    # an interface named in the selection is there even while it has no address
    matched = {n for iface in here for n in (iface.name, iface.nice_name)} & (wanted_names or set())
    for iface in here:
        named = wanted_names is None or bool({iface.name, iface.nice_name} & wanted_names)
        for ip in (address.ip for address in iface.addresses):
            if not _wanted(ip, ip_version):
                continue
            selected = named
            if not selected and wanted_names is not None:
                hit = {str(ip)} & wanted_names
                matched |= hit
                selected = bool(hit)
            if not selected:
                continue
            if ip.version == 4:
                bind.add(str(ip))
            elif iface.index is not None and not ip.is_loopback:
                # IPv6 loopback cannot send to ff02::fb (ENETUNREACH on every packet);
                # nodes on one host still hear each other through multicast loopback.
                bind.add(iface.index)
            if not ip.is_loopback and not (ip.version == 6 and ip.is_link_local):
                announce.add(str(ip))
    unmatched = () if wanted_names is None else tuple(sorted(wanted_names - matched))
    return Snapshot(
        bind=tuple(sorted(bind, key=lambda b: (isinstance(b, int), str(b)))),
        announce=tuple(sorted(announce)),
        unmatched=unmatched,
    )
