"""``exo-discovery doctor`` for mDNS: does multicast work on this host, and if not, why and what to do.

Each check does the real thing zeroconf will do (bind UDP 5353 with SO_REUSEADDR/SO_REUSEPORT,
join 224.0.0.251 / ff02::fb per interface, send a query and hear it looped back), so a failure
names the actual cause: no network, permission, a port held exclusively, a firewall.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import struct
import sys
from pathlib import Path

import anyio

from exo_discovery_core import CheckResult, DiscoveryContext, interface_addresses
from exo_discovery_core.interfacefilter import InterfaceFilter

from .config import MdnsConfig
from .interfaces import Snapshot, snapshot

MDNS_PORT = 5353
MDNS_V4 = "224.0.0.251"
MDNS_V6 = "ff02::fb"
IFF_UP = 0x1
IFF_MULTICAST = 0x1000
ECHO_TIMEOUT_S = 1.0
NO_NETWORK_FIX = (
    "connect this host to the LAN its peers are on (bring the interface up, join the Wi-Fi); "
    "mDNS only reaches the local network: across networks use the bootstrap or headscale plugin"
)


async def run_checks(context: DiscoveryContext[MdnsConfig]) -> list[CheckResult]:
    set_interfaces = context.how_to_set("interfaces")
    return await anyio.to_thread.run_sync(
        _run_checks, context.config, set_interfaces, context.node.interfaces
    )


def _run_checks(
    config: MdnsConfig, set_interfaces: str, node_interfaces: InterfaceFilter
) -> list[CheckResult]:
    snap = snapshot(config.interfaces, config.ip_version, node_interfaces=node_interfaces)
    results = [check_interfaces(config, snap, set_interfaces)]
    port = check_port(config)
    results.append(port)
    if port.ok and results[0].ok:
        results.append(check_multicast(snap))
    return results


def _linux_flags(ifname: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{ifname}/flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def multicast_interfaces() -> dict[str, list[str]]:
    """Non-loopback interfaces that are up, multicast-capable and have an address: name -> IPs."""
    found: dict[str, list[str]] = {}
    linux = sys.platform.startswith("linux")
    for entry in interface_addresses():
        flags = _linux_flags(entry.name) if linux else None
        if flags is not None and (flags & (IFF_UP | IFF_MULTICAST)) != (IFF_UP | IFF_MULTICAST):
            continue
        if not entry.ip.is_loopback:
            found.setdefault(entry.name, []).append(str(entry.ip))
    return found


def check_interfaces(config: MdnsConfig, snap: Snapshot, set_interfaces: str) -> CheckResult:
    """``set_interfaces`` says how to set the option: the fix of a name that matches nothing."""
    name = "mdns: multicast-capable network interface"
    usable = multicast_interfaces()
    if config.interfaces != "all" and snap.unmatched:
        return CheckResult(
            name=name,
            ok=False,
            detail=f"configured interfaces not found: {', '.join(snap.unmatched)} "
            f"(present: {', '.join(sorted(usable)) or 'none'})",
            fix=f'{set_interfaces} (e.g. "all")',
        )
    if not usable or not snap.announce:
        return CheckResult(
            name=name,
            ok=False,
            detail="no interface other than loopback is up with multicast and an "
            f"{'' if config.ip_version == 'all' else config.ip_version + ' '}address",
            fix=NO_NETWORK_FIX,
        )
    shown = "; ".join(f"{n}: {', '.join(ips)}" for n, ips in sorted(usable.items()))
    return CheckResult(name=name, ok=True, detail=f"{shown}; announcing {', '.join(snap.announce)}")


def _reusable_socket(family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def check_port(config: MdnsConfig) -> CheckResult:
    name = "mdns: UDP port 5353 can be shared"
    families = [socket.AF_INET] if config.ip_version != "v6" else []
    if config.ip_version != "v4" and socket.has_ipv6:
        families.append(socket.AF_INET6)
    for family in families:
        sock = _reusable_socket(family)
        try:
            sock.bind(("" if family == socket.AF_INET else "::", MDNS_PORT))
        except OSError as exc:
            return _port_failure(name, exc)
        finally:
            sock.close()
    return CheckResult(name=name, ok=True, detail="bound with SO_REUSEADDR/SO_REUSEPORT")


def _port_failure(name: str, exc: OSError) -> CheckResult:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CheckResult(
            name=name,
            ok=False,
            detail=f"permission denied binding UDP 5353: {exc.strerror}",
            fix="5353 is below this system's unprivileged port start: run the node with "
            "CAP_NET_BIND_SERVICE, or set sysctl net.ipv4.ip_unprivileged_port_start=0; "
            "a sandbox (container seccomp, SELinux/AppArmor profile) may also forbid it",
        )
    if exc.errno == errno.EADDRINUSE:
        return CheckResult(
            name=name,
            ok=False,
            detail="UDP 5353 is held by another program that did not set SO_REUSEPORT",
            fix="find it with `ss -ulpn 'sport = :5353'` (or `lsof -nP -iUDP:5353`) and stop it "
            "or let it share the port (avahi-daemon and mDNSResponder do); then restart the node",
        )
    return CheckResult(
        name=name, ok=False, detail=f"cannot bind UDP 5353: {exc}", fix="see the error above"
    )


def check_multicast(snap: Snapshot) -> CheckResult:
    """Join the groups on every interface, then send a query and hear it come back."""
    name = "mdns: multicast send and receive"
    v4 = [b for b in snap.bind if isinstance(b, str) and not b.startswith("127.")]
    v6 = [b for b in snap.bind if isinstance(b, int) and b != _loopback_index()]
    token = f"_doctor-{secrets.token_hex(4)}._tcp.local."
    query = _dns_query(token)
    problems: list[str] = []
    heard: list[str] = []
    for family, group, ifaces in ((socket.AF_INET, MDNS_V4, v4), (socket.AF_INET6, MDNS_V6, v6)):
        for iface in ifaces:
            outcome = _echo(family, group, iface, query)
            (heard if outcome is None else problems).append(
                f"{group} on {iface}" if outcome is None else f"{group} on {iface}: {outcome}"
            )
    if not heard:
        return CheckResult(
            name=name,
            ok=False,
            detail="; ".join(problems) or "no interface to test",
            fix="allow mDNS through the firewall (UDP 5353 to/from 224.0.0.251 and ff02::fb, "
            "e.g. `ufw allow 5353/udp` or `firewall-cmd --add-service=mdns`); on a VM or "
            "container use a bridged network, NAT does not pass multicast",
        )
    detail = "heard our own query on " + ", ".join(heard)
    if problems:
        detail += "; but not on " + "; ".join(problems)
    return CheckResult(name=name, ok=True, detail=detail)


def _loopback_index() -> int | None:
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return None


def _dns_query(qname: str) -> bytes:
    """A standard mDNS PTR question: harmless to every responder on the LAN."""
    header = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in qname.rstrip(".").split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 12, 1)


def _echo(family: socket.AddressFamily, group: str, iface: str | int, query: bytes) -> str | None:
    """None if a query sent on ``iface`` is heard back on a socket bound to 5353, else why not."""
    try:
        recv = _reusable_socket(family)
    except OSError as exc:
        return f"socket: {exc.strerror}"
    send = socket.socket(family, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        recv.bind(("" if family == socket.AF_INET else "::", MDNS_PORT))
        if family == socket.AF_INET:
            assert isinstance(iface, str)
            mreq = socket.inet_aton(group) + socket.inet_aton(iface)
            recv.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(iface))
            send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
            target: tuple[str, int] | tuple[str, int, int, int] = (group, MDNS_PORT)
        else:
            assert isinstance(iface, int)
            index = struct.pack("@I", iface)
            mreq = socket.inet_pton(socket.AF_INET6, group) + index
            recv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            send.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            send.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            target = (group, MDNS_PORT, 0, iface)
    except OSError as exc:
        recv.close()
        send.close()
        return f"cannot join the group ({errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror})"
    try:
        try:
            send.sendto(query, target)
        except OSError as exc:
            why = "blocked by a firewall (EPERM)" if exc.errno == errno.EPERM else exc.strerror
            return f"send failed: {why}"
        recv.settimeout(ECHO_TIMEOUT_S)
        deadline = os.times().elapsed + ECHO_TIMEOUT_S
        while os.times().elapsed < deadline:
            try:
                data, _ = recv.recvfrom(9000)
            except TimeoutError:
                break
            if data == query:
                return None
        return "sent but never heard back (a firewall dropping UDP 5353 inbound?)"
    finally:
        recv.close()
        send.close()
